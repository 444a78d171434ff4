"""``mobileo-server`` (or ``python -m mlx_model.server``): one local, OpenAI-compatible server
for everything Mobile-O does -- chat about an image, image generation and editing -- over one
model loaded once.

    mobileo-server --model demo --port 8080
    from openai import OpenAI
    client = OpenAI(base_url="http://127.0.0.1:8080/v1", api_key="none")

Pieces: :mod:`.cli` (flags, start-up), :mod:`.app` (routes), :mod:`.openai_api` (the wire
format), :mod:`.worker` (the thread that owns the model).  Needs the ``server`` extra
(``pip install 'mobileo-deploy[server]'``: FastAPI and uvicorn).
"""

from mlx_model.server.cli import main

__all__ = ["main"]
