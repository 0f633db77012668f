"""KoGPT2 chatbot: fine-tune a Korean causal LM on conversations with sentiments and chat with it."""
__version__ = "0.1.0"

from .framing import Turn, conversation_ids, example_ids, prompt_ids  # noqa: F401


def __getattr__(name):
    # Import torch and Lightning only when asked for.
    if name == "KoGPT2Chat":
        from .module import KoGPT2Chat

        return KoGPT2Chat
    if name in ("Chatbot", "Conversation", "Reply"):
        from . import api

        return getattr(api, name)
    if name == "Decoding":
        from .decoding import Decoding

        return Decoding
    raise AttributeError(name)
