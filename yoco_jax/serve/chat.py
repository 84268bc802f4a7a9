"""Chat: `POST /v1/chat/completions` bodies, and messages rendered to a prompt by a Jinja2 chat
template (Hugging Face's convention: `messages`, `add_generation_prompt`, `bos_token`,
`eos_token`), run in Jinja2's sandbox.

The default template suits base models, which know no chat format: a system message's text,
then "User: ..." / "Assistant: ..." turns separated by blank lines, ending in "Assistant:" for
the model to continue. A model trained on a chat format brings its own (`--chat-template`).
"""

from __future__ import annotations

import dataclasses

try:
    import jinja2
    import jinja2.sandbox
except ImportError as e:
    raise ImportError(f"chat templates need jinja2 ({e}): pip install -e '.[serve]'") from None

from yoco_jax.serve.schema import ApiError, body_fields, int_field, shared_fields

DEFAULT_CHAT_TEMPLATE = (
    "{% for m in messages %}"
    "{% if m['role'] == 'system' %}{{ m['content'] }}\n\n"
    "{% else %}{{ m['role'] | capitalize }}: {{ m['content'] }}\n\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}Assistant:{% endif %}"
)
ROLES = ("system", "developer", "user", "assistant", "tool")


@dataclasses.dataclass
class ChatParams:
    messages: list[dict]
    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int = 0
    stop: tuple[str, ...] = ()
    stream: bool = False
    include_usage: bool = False
    model: str | None = None
    n: int = 1


def _content(message: dict, i: int) -> str:
    """A message's text: a string, or a list of {"type": "text", "text": ...} parts."""
    content = message.get("content")
    if content is None and message.get("role") == "assistant":
        return ""
    if isinstance(content, list) and all(
        isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)
        for part in content
    ):
        return "".join(part["text"] for part in content)
    if not isinstance(content, str):
        raise ApiError(
            f"messages[{i}].content must be a string or a list of text parts",
            f"messages[{i}].content",
            "invalid_type",
        )
    return content


def parse_chat(body) -> ChatParams:
    """The settings of a chat request, or an ApiError naming the faulty field."""
    if isinstance(body, dict):  # chat's own fields, then the completions' shared checks
        body = dict(body)
        messages = body.pop("messages", None)
        if body.get("max_completion_tokens") is not None:
            body["max_tokens"] = body.pop("max_completion_tokens")
        body.pop("max_completion_tokens", None)
        if body.pop("logprobs", None) not in (None, False) or body.pop("top_logprobs", None):
            raise ApiError("logprobs are not supported on chat: use /v1/completions", "logprobs")
    body = body_fields(body)
    if not isinstance(messages, list) or not messages:
        raise ApiError("messages must be a non-empty list", "messages", "invalid_type")
    clean = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            raise ApiError(
                f"messages[{i}] must be an object with a role in {ROLES}",
                f"messages[{i}]",
                "invalid_value",
            )
        clean.append({"role": m["role"], "content": _content(m, i)})
    return ChatParams(clean, max_tokens=int_field(body, "max_tokens", 16, 1), **shared_fields(body))


class ChatTemplate:
    """A compiled chat template; `render(messages)` gives the prompt text."""

    def __init__(self, source: str | None, tokenizer=None):
        self.source = DEFAULT_CHAT_TEMPLATE if source is None else source
        env = jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        try:
            self._template = env.from_string(self.source)
        except jinja2.TemplateSyntaxError as e:
            raise ValueError(f"the chat template does not parse: {e} (line {e.lineno})") from None
        self._specials = {}
        if tokenizer is not None:
            piece = tokenizer.token_text
            self._specials = {"bos_token": piece(tokenizer.bos_id), "eos_token": ""}

    def render(self, messages: list[dict]) -> str:
        try:
            return self._template.render(
                messages=messages, add_generation_prompt=True, **self._specials
            )
        except jinja2.TemplateError as e:
            raise ApiError(f"the chat template failed on these messages: {e}", "messages") from None
