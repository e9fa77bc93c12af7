"""Stand-ins for SaaS ingestion APIs that enforce their documented contracts.

Each server listens on 127.0.0.1 (a free port, its own thread, like
:mod:`tests.support.server`), refuses what the real API refuses, with its status and a
JSON error body, and keeps what it accepted, so a test proves that a job honours the
contract instead of assuming it. Every server has ``url``, ``start()``, ``stop()``,
``requests`` (count), ``rejected`` (requests answered with a non-2xx status) and
``exchanges`` (one :class:`Exchange` per request: status, body size, item count, error).

* :class:`SegmentBatch`: Segment's HTTP Tracking API, ``POST /v1/batch``.
* :class:`AmplitudeV2`: Amplitude's HTTP V2 API, ``POST /2/httpapi``.
* :class:`MixpanelImport`: Mixpanel's Import Events API, ``POST /import``.
* :class:`ContactsApi`: a CRM-style ``PUT /contacts/<email>`` with a bearer token.
* :class:`SlackWebhook`: a Slack incoming webhook, optionally rate limited.
* :class:`ElasticsearchBulk`: Elasticsearch's (and OpenSearch's) ``POST /_bulk``.
* :class:`DatasetteInsert`: Datasette's ``POST /<db>/<table>/-/insert``.

Each lives in its own module; what they share (:class:`Request`, :class:`Answer`,
:class:`Exchange`, :class:`ContractServer`) is in :mod:`tests.support.contracts.base`.
Import them all from here.

Where the real API tolerates a mistake silently (Segment answers 200 to an unknown write
key and to an invalid event, and drops them), the stand-in does the same and records
what it dropped, so a test can assert that nothing was. Keys an event may carry beside
the documented ones are refused unless ``allow_unknown_fields`` is set: none of these
APIs documents what it does with them, so the strict answer is the safe one.

Request bodies sent with ``Content-Encoding: gzip`` are decompressed first; the size
limits apply to the uncompressed body, as the APIs document.
"""

from tests.support.contracts.amplitude import AmplitudeV2
from tests.support.contracts.base import (
    KIB,
    Answer,
    ContractServer,
    Exchange,
    Request,
    is_int,
    json_answer,
    json_size,
    nonempty_str,
    text_answer,
)
from tests.support.contracts.contacts import ContactsApi
from tests.support.contracts.datasette import DatasetteInsert
from tests.support.contracts.elasticsearch import ElasticsearchBulk
from tests.support.contracts.mixpanel import MixpanelImport
from tests.support.contracts.segment import SegmentBatch
from tests.support.contracts.slack import SlackWebhook

__all__ = [
    "KIB",
    "AmplitudeV2",
    "Answer",
    "ContactsApi",
    "ContractServer",
    "DatasetteInsert",
    "ElasticsearchBulk",
    "Exchange",
    "MixpanelImport",
    "Request",
    "SegmentBatch",
    "SlackWebhook",
    "is_int",
    "json_answer",
    "json_size",
    "nonempty_str",
    "text_answer",
]
