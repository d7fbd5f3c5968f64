"""Serving a fixed list of files from a folder (the console's, Swagger UI's).

The requested name is looked up in the list, never joined to the folder unchecked, so no request
can read anything outside it.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from fastapi.responses import FileResponse

from api.envelopes import not_found


def listed_file(
    folder: Path, media_types: Mapping[str, str], name: str, headers: Mapping[str, str]
) -> FileResponse:
    """``folder / name`` with its media type from ``media_types``; a 404 for any other name."""
    media_type = media_types.get(name)
    if media_type is None:
        raise not_found("file")
    return FileResponse(folder / name, media_type=media_type, headers=headers)
