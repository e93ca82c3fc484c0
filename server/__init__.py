"""The Messenger server: webhooks in, Graph API out (see issue 4)."""
