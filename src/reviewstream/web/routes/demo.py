"""The browser demo page."""

from __future__ import annotations

from importlib.resources import files

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

router = APIRouter(include_in_schema=False)


@router.get("/", response_class=HTMLResponse)
async def demo() -> HTMLResponse:
    """A page that writes a review and shows it arriving, in the mode you pick."""
    page = files("reviewstream.web").joinpath("static/demo.html").read_text(encoding="utf-8")
    return HTMLResponse(page)
