"""``rqa serve``: an OpenAI-compatible API and a chat page over a trained run, with batched generation."""
