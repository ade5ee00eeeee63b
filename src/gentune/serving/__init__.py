"""Serving: `gentune serve`, an OpenAI-compatible HTTP API: the FastAPI app and its routes
(`app`), the HTTP edge (`guard`), the request and response shapes (`openai_api`), the bounded
queue and batching (`scheduler`), and the playground page (`static/`).

Imports: the core, `data`, `models` and `inference`."""
