"""KoGPT2 chatbot: fine-tune a Korean causal LM on question/answer/sentiment data and chat with it."""
__version__ = "0.1.0"

from .framing import example_ids, prompt_ids  # noqa: F401


def __getattr__(name):
    # KoGPT2Chat pulls in Lightning; import it only when asked for.
    if name == "KoGPT2Chat":
        from .module import KoGPT2Chat

        return KoGPT2Chat
    raise AttributeError(name)
