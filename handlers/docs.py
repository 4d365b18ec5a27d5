"""The API's own description: /openapi.yaml, /openapi.json, and Swagger UI at /docs (served locally)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import yaml
from swagger_ui_bundle import swagger_ui_path
from tornado.web import StaticFileHandler

from handlers.base import BaseHandler

OPENAPI_FILE = Path(__file__).resolve().parent.parent / "openapi.yaml"
SWAGGER_UI_DIR = str(swagger_ui_path)

DOCS_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>Quiz &amp; audio service API</title>
  <link rel="stylesheet" href="/docs/static/swagger-ui.css">
  <link rel="icon" type="image/png" href="/docs/static/favicon-32x32.png" sizes="32x32">
</head>
<body>
  <div id="swagger-ui"></div>
  <script src="/docs/static/swagger-ui-bundle.js"></script>
  <script>
    window.ui = SwaggerUIBundle({url: "/openapi.json", dom_id: "#swagger-ui", deepLinking: true});
  </script>
</body>
</html>
"""


@dataclass(frozen=True)
class OpenApiDocument:
    """openapi.yaml as it is in the repository, and the same document as JSON."""

    yaml_text: str
    json_text: str


def load_openapi_document(path: Path = OPENAPI_FILE) -> OpenApiDocument:
    """Read and parse the OpenAPI document once, at start-up."""
    text = path.read_text(encoding="utf-8")
    return OpenApiDocument(text, json.dumps(yaml.safe_load(text), ensure_ascii=False))


class OpenApiHandler(BaseHandler):
    """GET /openapi.yaml or /openapi.json."""

    def initialize(self, as_json: bool) -> None:  # type: ignore[override]
        """Which of the two forms this route serves."""
        super().initialize()
        self.as_json = as_json

    def get(self) -> None:
        """The document."""
        document: OpenApiDocument = self.application.settings["openapi"]
        if self.as_json:
            self.set_header("Content-Type", "application/json; charset=utf-8")
            self.finish(document.json_text)
        else:
            self.set_header("Content-Type", "application/yaml; charset=utf-8")
            self.finish(document.yaml_text)


class DocsHandler(BaseHandler):
    """GET /docs: Swagger UI for this API, with no request leaving the machine."""

    def get(self) -> None:
        """The page."""
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.finish(DOCS_PAGE)


class RootHandler(BaseHandler):
    """GET /: a browser opening the service's address lands on its documentation."""

    def get(self) -> None:
        """Redirect to /docs."""
        self.redirect("/docs")


class DocsAssetHandler(BaseHandler, StaticFileHandler):
    """Swagger UI's scripts and styles, from the swagger-ui-bundle package: StaticFileHandler's
    serving (Range, HEAD, 304) with this API's problem documents."""

    def initialize(self, path: str) -> None:  # type: ignore[override]
        """Serve files below `path`."""
        BaseHandler.initialize(self)
        StaticFileHandler.initialize(self, path)

    def compute_etag(self) -> str | None:
        """StaticFileHandler's content hash (the base handler sends no ETags)."""
        return StaticFileHandler.compute_etag(self)

    async def get(self, path: str, include_body: bool = True) -> None:
        """Send the file; an unsatisfiable range becomes a problem document too."""
        await StaticFileHandler.get(self, path, include_body)
        if self.get_status() == 416 and not self._finished:
            self.write_problem(416, "the requested range is not satisfiable")

    def set_extra_headers(self, path: str) -> None:
        """Assets change only with the package: let browsers keep them for a day."""
        self.set_header("Cache-Control", "public, max-age=86400")
