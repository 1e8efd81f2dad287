"""rqa: fine-tune decoder LLMs for retrieval-augmented question answering and measure them end to end."""

__version__ = "0.1.0"
