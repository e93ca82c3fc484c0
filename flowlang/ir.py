"""The compiled form of a program: the contract between the compiler and the runtime.

Pydantic v2 models, frozen, extra fields forbidden. Every step and action carries a SourceRef
so a runtime fault can name the `.flow` file and line. `flowc schema` prints the JSON Schema.
Bump IR_VERSION on any change the runtime must know about."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

IR_VERSION = 1

#: The fields of the `user` namespace in texts and expressions: the Messenger user profile
#: (empty text when Messenger does not share one) and `id`, the user's page-scoped id.
USER_FIELDS = ("id", "first_name", "last_name", "profile_pic", "locale", "timezone", "gender")

#: Messenger's app id for the Page Inbox (a human takes over there).
PAGE_INBOX_APP_ID = "263902037430900"


def step_payload(flow: str, step: str) -> str:
    """The postback/quick-reply payload of a button that goes to a step of a flow."""
    return f"FLOW:{flow}:{step}"


def flow_payload(flow: str) -> str:
    """The payload of a button that starts a flow from its first step."""
    return f"FLOW:{flow}"


def answer_payload(flow: str, action_id: str, index: int) -> str:
    """The payload of choice `index` of the question `action_id` in `flow`."""
    return f"ANSWER:{flow}:{action_id}:{index}"


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class SourceRef(_Model):
    """Where something was written: file, 1-based line and column."""

    file: str
    line: int
    column: int


class Button(_Model):
    """A template button, shaped like the Send API's (plus where a postback leads)."""

    type: Literal["postback", "web_url", "phone_number"]
    title: str
    payload: str | None = None
    url: str | None = None
    webview_height_ratio: Literal["compact", "tall", "full"] | None = None
    target_flow: str | None = None
    target_step: str | None = None


class QuickReply(_Model):
    """A quick reply, shaped like the Send API's (plus where a tap leads)."""

    content_type: Literal["text", "user_email", "user_phone_number"]
    title: str | None = None
    payload: str | None = None
    image_url: str | None = None
    target_flow: str | None = None
    target_step: str | None = None


class _Action(_Model):
    id: str = Field(description="Unique within its flow or template: step name and position.")
    source: SourceRef


class SayAction(_Action):
    """Send a text (one of `texts` at random), with optional buttons or quick replies."""

    kind: Literal["say"] = "say"
    texts: tuple[str, ...]
    buttons: tuple[Button, ...] = ()
    quick_replies: tuple[QuickReply, ...] = ()
    tag: str | None = None


class MediaAction(_Action):
    """Send an image, video, audio clip or file by URL."""

    kind: Literal["media"] = "media"
    media_type: Literal["image", "video", "audio", "file"]
    url: str


class DefaultAction(_Model):
    """What tapping a card itself opens."""

    url: str
    webview_height_ratio: Literal["compact", "tall", "full"] | None = None


class Card(_Model):
    """One element of a carousel (generic template)."""

    title: str
    subtitle: str | None = None
    image_url: str | None = None
    default_action: DefaultAction | None = None
    buttons: tuple[Button, ...] = ()


class CarouselAction(_Action):
    """Send a carousel of cards."""

    kind: Literal["carousel"] = "carousel"
    cards: tuple[Card, ...]
    quick_replies: tuple[QuickReply, ...] = ()
    tag: str | None = None


class TypingAction(_Action):
    """Show the typing indicator, for `seconds` if given."""

    kind: Literal["typing"] = "typing"
    seconds: float | None = None


class PauseAction(_Action):
    """Wait a moment before the next message."""

    kind: Literal["pause"] = "pause"
    seconds: float


class SetAction(_Action):
    """Set a conversation variable from a Jinja expression."""

    kind: Literal["set"] = "set"
    var: str
    expr: str


class Choice(_Model):
    """One offered answer to a question."""

    title: str
    payload: str
    target_flow: str | None = None
    target_step: str | None = None


class AskAction(_Action):
    """Ask, wait for the user's next message, check it, re-ask or give up."""

    kind: Literal["ask"] = "ask"
    prompts: tuple[str, ...]
    var: str | None = None
    expect: Literal["text", "number", "email", "phone", "yes_no", "pattern", "choice"]
    pattern: str | None = None
    choices: tuple[Choice, ...] = ()
    choice_style: Literal["quick_replies", "buttons"] = "quick_replies"
    quick_replies: tuple[QuickReply, ...] = ()
    reask: tuple[str, ...] = ()
    max_tries: int = 3
    on_fail_step: str | None = Field(
        default=None, description="Step to go to after max_tries wrong answers; null ends."
    )


class Branch(_Model):
    """A condition and what to do when it is true."""

    condition: str
    actions: tuple[Action, ...]
    source: SourceRef


class IfAction(_Action):
    """Run the first branch whose condition is true, else `else_actions`."""

    kind: Literal["if"] = "if"
    branches: tuple[Branch, ...]
    else_actions: tuple[Action, ...] | None = None


class GotoAction(_Action):
    """Continue at another step of the same flow."""

    kind: Literal["goto"] = "goto"
    step: str


class EndAction(_Action):
    """End the flow (returning to the caller if it was called)."""

    kind: Literal["end"] = "end"


class CallAction(_Action):
    """Run another flow, then continue after this action."""

    kind: Literal["call"] = "call"
    flow: str


class ResumeAction(_Action):
    """End this flow and resume the conversation it interrupted."""

    kind: Literal["resume"] = "resume"


class HandOverAction(_Action):
    """Pass the thread to a human (the Page Inbox) or another app."""

    kind: Literal["hand_over"] = "hand_over"
    app_id: str = PAGE_INBOX_APP_ID
    metadata: str | None = None


class TakeBackAction(_Action):
    """Take the thread back from a human or another app."""

    kind: Literal["take_back"] = "take_back"
    metadata: str | None = None


class TemplateAction(_Action):
    """Send a reusable message template; `args` are texts rendered in the flow's context."""

    kind: Literal["template"] = "template"
    template: str
    args: dict[str, str] = Field(default_factory=dict)


Action = Annotated[
    SayAction
    | MediaAction
    | CarouselAction
    | TypingAction
    | PauseAction
    | SetAction
    | AskAction
    | IfAction
    | GotoAction
    | EndAction
    | CallAction
    | ResumeAction
    | HandOverAction
    | TakeBackAction
    | TemplateAction,
    Field(discriminator="kind"),
]


class Trigger(_Model):
    """What starts a flow. Interrupting triggers also fire while another flow waits."""

    kind: Literal[
        "get_started", "keyword", "postback", "quick_reply", "referral", "regex", "fallback"
    ]
    values: tuple[str, ...] = ()
    interrupting: bool = False
    source: SourceRef


class Step(_Model):
    """A named step: its actions, then `next` (the following step) unless an action left."""

    id: str
    actions: tuple[Action, ...]
    next: str | None = None
    source: SourceRef


class Flow(_Model):
    """One flow: header, triggers and steps. `content_hash` identifies this version."""

    id: str
    title: str
    priority: int = 0
    active: bool = True
    triggers: tuple[Trigger, ...] = ()
    entry: str
    steps: dict[str, Step]
    error_message: str | None = None
    content_hash: str
    source: SourceRef


class Template(_Model):
    """A reusable message with parameters."""

    id: str
    params: tuple[str, ...] = ()
    actions: tuple[Action, ...]
    source: SourceRef


class Greeting(_Model):
    """The greeting shown before a conversation starts, for one locale."""

    locale: str
    text: str


class Menu(_Model):
    """The persistent menu for one locale."""

    locale: str
    composer_input_disabled: bool = False
    call_to_actions: tuple[Button, ...]


class IceBreaker(_Model):
    """A suggested first question."""

    question: str
    payload: str


class IceBreakers(_Model):
    """Ice breakers for one locale."""

    locale: str
    call_to_actions: tuple[IceBreaker, ...]


class PageConfig(_Model):
    """The page's Messenger profile, as `flowc page setup --configure-profile` pushes it."""

    greeting: tuple[Greeting, ...] = ()
    get_started_payload: str | None = None
    persistent_menu: tuple[Menu, ...] = ()
    ice_breakers: tuple[IceBreakers, ...] = ()
    whitelisted_domains: tuple[str, ...] = ()
    error_message: str | None = None
    source: SourceRef


class FlowProgram(_Model):
    """Everything compiled from a set of `.flow` files."""

    schema_version: Literal[1] = IR_VERSION
    content_hash: str
    flows: dict[str, Flow]
    templates: dict[str, Template] = Field(default_factory=dict)
    page: PageConfig | None = None


Branch.model_rebuild()
IfAction.model_rebuild()
Step.model_rebuild()
Template.model_rebuild()
