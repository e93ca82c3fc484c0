"""The Flowlang runtime: runs compiled flows against persisted conversation state."""
