"""HTTP handlers, one module per resource; `ROUTES` lists every path the service answers."""

from handlers.health import HealthHandler
from handlers.questions import QuestionsHandler

ROUTES = [
    (r"/health", HealthHandler),
    (r"/questions", QuestionsHandler),
]
