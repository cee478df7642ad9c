"""The demo page at / and the corpus images it shows, at /images/{image_id}.

The page (serve/static/index.html) posts to /search and shows the top images with their scores
and the per-stage timings; `/?q=two%20horses` runs a query on load. Images are the corpus's
`images/{id}.png` (lateint.data.scenes writes them); only ids of the INDEX are served, and only
as regular files inside the images directory: a symlink (to /etc/passwd or anywhere else) is
never followed, and no error body names a server path.
"""

import os
import stat
import urllib.parse
from typing import Annotated

import fastapi
from fastapi import responses

STATIC_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")
PAGE_FILE = os.path.join(STATIC_DIR, "index.html")
MAX_IMAGE_BYTES = 32 << 20


def read_confined(images_dir: str, name: str) -> bytes | None:
    """The bytes of the regular file `name` directly inside `images_dir`, or None when there is
    none: no such file, a symlink (not followed: O_NOFOLLOW on the file, and its real path must
    be inside the real images_dir), a directory, or a file over MAX_IMAGE_BYTES."""
    if "/" in name or "\\" in name or name in (".", ".."):
        return None
    root = os.path.realpath(images_dir)
    path = os.path.join(root, name)
    if os.path.dirname(os.path.realpath(path)) != root:
        return None
    try:
        descriptor = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError:  # missing, or a symlink (ELOOP)
        return None
    try:
        status = os.fstat(descriptor)
        if not stat.S_ISREG(status.st_mode) or status.st_size > MAX_IMAGE_BYTES:
            return None
        chunks, left = [], status.st_size
        while left > 0:
            chunk = os.read(descriptor, left)
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)
    finally:
        os.close(descriptor)


def default_images_dir(index_dir: str, manifest: dict) -> str | None:
    """INDEX/<source.data>/images when the manifest names the corpus and the folder exists.

    The manifest's source.data is the corpus directory relative to the INDEX (lateint.index.precompute
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

    @app.get(
        "/images/{image_id}",
        response_class=responses.Response,
        responses={
            200: {"content": {"image/png": {}}, "description": "the image"},
            404: {"description": "unknown id, or no image for it"},
        },
    )
    async def image(
        image_id: Annotated[
            str,
            fastapi.Path(
                description="an id of the INDEX (INDEX/ids.txt)", examples=list(image_ids[:1])
            ),
        ],
    ):
        """The corpus image of an INDEX id (PNG)."""
        if images_dir is None:
            return responses.JSONResponse(
                {
                    "error": "this server has no images directory (start it with --images_dir, "
                    "or precompute from a corpus with images/)"
                },
                status_code=404,
            )
        if image_id not in known:
            return responses.JSONResponse(
                {"error": f"image id {image_id!r:.80} is not in the index"}, status_code=404
            )
        content = read_confined(images_dir, f"{image_id}.png")
        if content is None:
            return responses.JSONResponse(
                {"error": f"no image file for id {image_id!r:.80} in the images directory"},
                status_code=404,
            )
        return responses.Response(content, media_type="image/png")
