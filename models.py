"""Peewee models: the three tables, bound through a proxy to the pool `database.py` opens."""

from __future__ import annotations

import peewee
from playhouse.postgres_ext import DateTimeTZField

database = peewee.DatabaseProxy()

NOW = peewee.SQL("DEFAULT now()")


class BaseModel(peewee.Model):
    """Models live in the proxied database."""

    class Meta:
        database = database


class Question(BaseModel):
    """A quiz question copied from the jService upstream; `jservice_id` is the upstream id."""

    id = peewee.BigAutoField()
    jservice_id = peewee.BigIntegerField(unique=True)
    question = peewee.TextField()
    answer = peewee.TextField()
    created_at = DateTimeTZField(null=True)
    airdate = DateTimeTZField(null=True)
    value = peewee.IntegerField(null=True)
    category = peewee.TextField(null=True)
    saved_at = DateTimeTZField(constraints=[NOW])

    class Meta:
        table_name = "questions"


class User(BaseModel):
    """Someone who uploads records; only a SHA-256 digest of the access token is kept."""

    id = peewee.BigAutoField()
    name = peewee.TextField()
    token_sha256 = peewee.CharField(max_length=64)
    created_at = DateTimeTZField(constraints=[NOW])

    class Meta:
        table_name = "users"


class Record(BaseModel):
    """An uploaded WAV, stored as an MP3 under MEDIA_DIR at `path` (relative)."""

    id = peewee.UUIDField(primary_key=True)
    user = peewee.ForeignKeyField(User, backref="records", on_delete="CASCADE")
    original_name = peewee.TextField()
    path = peewee.TextField(unique=True)
    size = peewee.BigIntegerField()
    duration = peewee.DoubleField()
    created_at = DateTimeTZField(constraints=[NOW])

    class Meta:
        table_name = "records"
        # A user's records newest first (GET /users/{id}/records) read from the index, not sorted.
        indexes = ((("user", "created_at", "id"), False),)


MODELS: list[type[BaseModel]] = [Question, User, Record]
