"""Request bodies. The decoding options are the ones declared in `decoding.py`, not a copy."""
from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from .. import grounding as gr
from ..decoding import request_schema

DecodingOptions = request_schema()

# Checked by the chatbot API, as in Python: pydantic would make `true` or 1.0 into 1, which it refuses.
Sentiment = Annotated[Any, Field(json_schema_extra={"anyOf": [{"type": "integer"}, {"type": "string"}]})]

# A mode from grounding.MODES (checked by grounding.check_mode); None: the server's default
# (`serve --grounding`, else the checkpoint's). Whether this bot can ground is the route's check.
Grounding = Annotated[str | None, AfterValidator(lambda mode: None if mode is None else gr.check_mode(mode)),
                      Field(description=f"where the reply comes from: {', '.join(gr.MODES)}; default: the server's",
                            json_schema_extra={"enum": [*gr.MODES, None]})]


class HistoryTurn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    question: str
    answer: str
    sentiment: Sentiment = None
    grounding: Grounding = None


class ChatRequest(DecodingOptions):
    question: str
    sentiment: Sentiment = None
    history: list[HistoryTurn] = Field(default_factory=list, description="earlier turns, oldest first")
    grounding: Grounding = None


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")  # a user message may carry its own "sentiment"
    role: str
    content: str | list | None = None


class ChatCompletionRequest(BaseModel):
    model_config = ConfigDict(extra="allow")  # OpenAI clients send fields we have no use for
    model: str | None = None
    messages: list[Message] = Field(min_length=1)
    stream: bool = False
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0)
    top_p: float | None = Field(None, gt=0, le=1)
    n: Literal[1] = 1
    seed: int | None = None
    stop: str | list[str] | None = None
    sentiment: Sentiment = None
    # What llama-server and vLLM hand their chat template: {"sentiment": 1} there is the sentiment here,
    # so a client written for either gets the same prompt from this server.
    chat_template_kwargs: dict[str, Any] | None = None
    grounding: Grounding = None
