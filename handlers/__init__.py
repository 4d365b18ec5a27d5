"""HTTP handlers, one module per resource; `ROUTES` lists every path the service answers."""

from handlers.health import HealthHandler
from handlers.questions import QuestionsHandler
from handlers.records import RecordDownloadHandler, RecordUploadHandler
from handlers.users import UserHandler, UsersHandler

ROUTES = [
    (r"/health", HealthHandler),
    (r"/questions", QuestionsHandler),
    (r"/users", UsersHandler),
    (r"/users/([0-9]+)", UserHandler),
    (r"/records", RecordUploadHandler),
    (r"/record", RecordDownloadHandler),
]
