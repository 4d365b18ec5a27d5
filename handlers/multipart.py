"""multipart/form-data parsed as it streams in: the few small fields we read kept in memory, the
file part written straight to disk (a Spool, which a conversion may follow), everything else
dropped, so an upload is never held in memory."""

from __future__ import annotations

from collections.abc import Collection

from python_multipart.exceptions import FormParserError, MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from converters.spool import Spool

MAX_FIELD_BYTES = 1024
MAX_PARTS = 16
MAX_FILENAME_CHARS = 255


class MalformedForm(ValueError):
    """The body is not well-formed multipart/form-data (answered with 400)."""


class StreamingForm:
    """Feeds body chunks to a multipart parser. The first part named `file_field` goes to `spool`;
    of the other parts only those named in `fields` are kept (up to MAX_FIELD_BYTES each), the
    first of each name; the names sent more than once are in `repeated`."""

    def __init__(self, content_type: str, file_field: str, spool: Spool, fields: Collection[str]) -> None:
        kind, params = parse_options_header(content_type)
        boundary = params.get(b"boundary")
        if kind != b"multipart/form-data" or not boundary:
            raise MalformedForm("the body must be multipart/form-data with a boundary")
        self.fields: dict[str, str] = {}
        self.repeated: set[str] = set()
        self.filename: str | None = None
        self.file_parts = 0
        self.spool = spool
        self._file_field = file_field
        self._wanted = frozenset(fields)
        self._writing = False
        self._ended = False  # pragma: no mutate - equivalent: None is as false
        self._parts = 0
        self._header_name = bytearray()
        self._header_value = bytearray()
        # Equivalent mutants: each part's state is set again by _on_part_begin before any use.
        self._headers: dict[bytes, bytes] = {}  # pragma: no mutate
        self._part_name: str | None = None  # pragma: no mutate
        self._part_value = bytearray()  # pragma: no mutate
        callbacks = {
            "on_part_begin": self._on_part_begin,
            "on_header_field": lambda data, start, end: self._header_name.extend(data[start:end]),
            "on_header_value": lambda data, start, end: self._header_value.extend(data[start:end]),
            "on_header_end": self._on_header_end,
            "on_headers_finished": self._on_headers_finished,
            "on_part_data": self._on_part_data,
            "on_part_end": self._on_part_end,
            "on_end": self._on_end,
        }
        try:
            # Its defaults bound a part's headers: 8 lines of 4,224 bytes at most.
            self._parser = MultipartParser(boundary, callbacks)  # type: ignore[arg-type]
        except FormParserError as error:
            raise MalformedForm(f"unusable multipart boundary: {error}") from None

    def feed(self, chunk: bytes) -> None:
        """Parse the next piece of the body (blocking: the file part is written as it comes)."""
        try:
            self._parser.write(chunk)
        except FormParserError as error:
            raise MalformedForm(f"malformed multipart body: {error}") from None

    def finish(self) -> None:
        """The body is complete; raises MalformedForm when it stopped before the closing boundary."""
        self.close()
        if not self._ended:
            raise MalformedForm("the multipart body ends before its closing boundary")

    def close(self) -> None:
        """Stop writing: a file part cut short is abandoned (the file stays for the caller to delete)."""
        if self._writing:
            self._writing = False  # pragma: no mutate - equivalent: a second abandon changes nothing
            self.spool.abandon()

    def _on_part_begin(self) -> None:
        self._parts += 1
        if self._parts > MAX_PARTS:
            raise MultipartParseError(f"more than {MAX_PARTS} parts")
        self._headers = {}
        self._part_name = None  # pragma: no mutate - equivalent: _on_headers_finished names the part first
        self._part_value = bytearray()

    def _on_header_end(self) -> None:
        self._headers[bytes(self._header_name).strip().lower()] = bytes(self._header_value).strip()
        self._header_name = bytearray()
        self._header_value = bytearray()

    def _on_headers_finished(self) -> None:
        disposition, params = parse_options_header(self._headers.get(b"content-disposition"))
        name = params.get(b"name")
        if disposition != b"form-data" or name is None:
            raise MultipartParseError("a part has no Content-Disposition: form-data name")
        self._part_name = name.decode("utf-8", "replace")
        if self._part_name == self._file_field:
            self.file_parts += 1
            if self.file_parts == 1:
                raw_name = params.get(b"filename", b"")
                self.filename = raw_name.decode("utf-8", "replace")[:MAX_FILENAME_CHARS]
                self.spool.open()
                self._writing = True

    def _on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self._part_name == self._file_field:
            if self._writing:
                self.spool.write(memoryview(data)[start:end])  # a view: pieces are up to 1 MiB
        elif self._part_name not in self._wanted:
            return
        elif len(self._part_value) + (end - start) > MAX_FIELD_BYTES:
            raise MultipartParseError(f"field {self._part_name!r} is longer than {MAX_FIELD_BYTES} bytes")
        else:
            self._part_value.extend(data[start:end])

    def _on_part_end(self) -> None:
        if self._part_name == self._file_field:
            if self._writing:
                self._writing = False
                self.spool.complete()
        elif self._part_name in self.fields:
            self.repeated.add(self._part_name)
        elif self._part_name in self._wanted:
            self.fields[self._part_name] = self._part_value.decode("utf-8", "replace")

    def _on_end(self) -> None:
        self._ended = True
