"""The demo page at / and the corpus images it shows, at /images/{image_id}.

The page (serve/static/index.html) posts to /search and shows the top images with their scores
and the per-stage timings; `/?q=two%20horses` runs a query on load. Images are the corpus's
`images/{id}.png` (lateint.data.scenes writes them); only ids of the INDEX are served, so the
route cannot reach any other file.
"""


import os
import urllib.parse
from typing import Annotated

import fastapi
from fastapi import responses

STATIC_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")
PAGE_FILE = os.path.join(STATIC_DIR, "index.html")


def default_images_dir(index_dir: str, manifest: dict) -> str | None:
    """INDEX/<source.data>/images when the manifest names the corpus and the folder exists.

    The manifest's source.data is the corpus directory relative to the INDEX (index.precompute
    writes it); None when there is no such entry or folder.
    """
    source = manifest.get("source") or {}
    data = source.get("data") if isinstance(source, dict) else None
    if not isinstance(data, str) or not data:
        return None
    images_dir = os.path.normpath(os.path.join(index_dir, data, "images"))
    return images_dir if os.path.isdir(images_dir) else None


def image_url(image_id: str) -> str:
    return "/images/" + urllib.parse.quote(image_id, safe="")


def add_routes(app: fastapi.FastAPI, image_ids: list[str], images_dir: str | None) -> None:
    """GET / (the page) and GET /images/{image_id} (image/png, 404 for unknown ids)."""
    with open(PAGE_FILE, encoding="utf-8") as handle:
        page = handle.read()
    known = frozenset(image_ids)

    @app.get("/", response_class=responses.HTMLResponse, include_in_schema=False)
    async def demo_page():
        return responses.HTMLResponse(page)

    @app.get("/images/{image_id}", response_class=responses.FileResponse,
             responses={200: {"content": {"image/png": {}}, "description": "the image"},
                        404: {"description": "unknown id, or no image for it"}})
    async def image(image_id: Annotated[str, fastapi.Path(
            description="an id of the INDEX (INDEX/ids.txt)", examples=list(image_ids[:1]))]):
        """The corpus image of an INDEX id (PNG)."""
        if images_dir is None:
            return responses.JSONResponse(
                {"error": "this server has no images directory (start it with --images_dir, "
                          "or precompute from a corpus with images/)"}, status_code=404)
        if image_id not in known:
            return responses.JSONResponse(
                {"error": f"image id {image_id!r:.80} is not in the index"}, status_code=404)
        path = os.path.join(images_dir, f"{image_id}.png")
        if not os.path.isfile(path):
            return responses.JSONResponse(
                {"error": f"no image file for id {image_id!r} in {images_dir}"},
                status_code=404)
        return responses.FileResponse(path, media_type="image/png")
