"""HTTP handlers, one module per resource; `ROUTES` lists every path the service answers."""

from typing import Any

from handlers.docs import SWAGGER_UI_DIR, DocsAssetHandler, DocsHandler, OpenApiHandler, RootHandler
from handlers.health import HealthHandler
from handlers.questions import QuestionsHandler
from handlers.records import RecordHandler, RecordUploadHandler, UserRecordsHandler
from handlers.users import UserHandler, UsersHandler

ROUTES: list[tuple[str, Any] | tuple[str, Any, dict[str, Any]]] = [
    (r"/", RootHandler),
    (r"/health", HealthHandler),
    (r"/questions", QuestionsHandler),
    (r"/users", UsersHandler),
    (r"/users/([1-9][0-9]*)", UserHandler),
    (r"/users/([1-9][0-9]*)/records", UserRecordsHandler),
    (r"/records", RecordUploadHandler),
    (r"/record", RecordHandler),
    (r"/openapi.yaml", OpenApiHandler, {"as_json": False}),
    (r"/openapi.json", OpenApiHandler, {"as_json": True}),
    (r"/docs", DocsHandler),
    (r"/docs/static/(.+)", DocsAssetHandler, {"path": SWAGGER_UI_DIR}),
]
