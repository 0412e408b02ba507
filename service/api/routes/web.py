"""The playground page: ``GET /`` and its static assets under ``/web/``.

Everything the page needs ships inside the package (``service/web/``), plotly.js included, so
it works offline and makes no request outside the service. None of it is in the OpenAPI schema.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse
from starlette.routing import Mount
from starlette.staticfiles import StaticFiles

WEB_ROOT = Path(__file__).resolve().parent.parent.parent / "web"
"""``service/web``: index.html, the ES modules (main.js and those it imports), style.css and
vendor/ (plotly.js and its licence)."""

CONTENT_SECURITY_POLICY = (
    "default-src 'self'; connect-src 'self'; img-src 'self' data: blob:; "
    "style-src 'self' 'unsafe-inline'; script-src 'self'; worker-src 'self' blob:; "
    "object-src 'none'; base-uri 'none'; frame-ancestors 'self'"
)
"""Only this origin: plotly.js injects its own <style> elements, hence 'unsafe-inline' for styles."""

router = APIRouter(tags=["playground"])


@router.get("/", include_in_schema=False)
async def playground() -> FileResponse:
    return FileResponse(
        WEB_ROOT / "index.html",
        media_type="text/html; charset=utf-8",
        headers={"Cache-Control": "no-cache", "Content-Security-Policy": CONTENT_SECURITY_POLICY},
    )


# main.py adds ``router.routes`` to the application directly, so the Mount goes in that list.
router.routes.append(Mount("/web", app=StaticFiles(directory=WEB_ROOT, check_dir=False), name="web"))
