"""The static OpenAPI 3.1 document of the relay's HTTP endpoints (``GET /openapi.json``).

Kept by hand beside the handlers; ``tests/e2e/test_relay_http.py`` checks that every route
the app registers is described here and nothing else is. The WebSocket frames themselves
are specified in docs/protocol.md, not here.
"""

from __future__ import annotations

from typing import Any, Final

__all__ = ["openapi_document"]

_ERROR: Final = {
    "description": "Error",
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
}
_BLOB_PARAMS: Final = [
    {"name": "blob_id", "in": "path", "required": True,
     "description": "The blob id, 32 lowercase hex digits.",
     "schema": {"type": "string", "pattern": "^[0-9a-f]{32}$"}},
    {"name": "expires_at_ms", "in": "path", "required": True,
     "description": "Expiry of the token, Unix milliseconds, as in the BlobToken url_path.",
     "schema": {"type": "integer", "minimum": 0}},
]
_INDEX_PARAM: Final = {
    "name": "index", "in": "path", "required": True,
    "description": "Chunk index, 0-based, below the reserved chunk_count.",
    "schema": {"type": "integer", "minimum": 0, "maximum": 65535},
}
_STATUS_RESPONSE: Final = {
    "description": "The blob's reservation and progress.",
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/BlobStatus"}}},
}


def openapi_document(version: str) -> dict[str, Any]:
    """The document, with *version* as ``info.version``."""
    chunk_params = [*_BLOB_PARAMS, _INDEX_PARAM]
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Pigeon relay",
            "version": version,
            "description": (
                "HTTP endpoints of a Pigeon blind relay. Messaging runs over the WebSocket "
                "at /v1/ws (frames: docs/protocol.md). File chunks are transferred over "
                "HTTP with bearer tokens obtained in BlobToken frames."
            ),
            "license": {"name": "Apache-2.0", "identifier": "Apache-2.0"},
        },
        "components": {
            "securitySchemes": {
                "blobToken": {
                    "type": "http", "scheme": "bearer", "bearerFormat": "64 hex digits",
                    "description": "BlobToken.token: HMAC-SHA-256 over operation, blob id "
                                   "and expiry, hex-encoded.",
                },
            },
            "schemas": {
                "Error": {
                    "type": "object", "required": ["error"],
                    "properties": {"error": {"type": "string"}},
                },
                "Health": {
                    "type": "object", "required": ["status", "store"],
                    "properties": {
                        "status": {"enum": ["ok", "unavailable"]},
                        "store": {"enum": ["ok", "unavailable"]},
                        "blobs": {"enum": ["ok", "unavailable"]},
                    },
                },
                "BlobStatus": {
                    "type": "object",
                    "required": ["blob_id", "size", "chunk_count", "chunks_received",
                                 "bytes_received", "complete", "expires_at_ms"],
                    "properties": {
                        "blob_id": {"type": "string"},
                        "index": {"type": "integer", "description": "PUT only: the chunk."},
                        "size": {"type": "integer"},
                        "chunk_count": {"type": "integer"},
                        "chunks_received": {"type": "integer"},
                        "bytes_received": {"type": "integer"},
                        "complete": {"type": "boolean"},
                        "expires_at_ms": {"type": "integer"},
                    },
                },
            },
        },
        "paths": {
            "/health": {"get": {
                "summary": "Liveness and store readiness",
                "operationId": "health",
                "responses": {
                    "200": {"description": "Serving; the store answers.",
                            "content": {"application/json": {
                                "schema": {"$ref": "#/components/schemas/Health"}}}},
                    "503": {"description": "The store or blob folder does not answer.",
                            "content": {"application/json": {
                                "schema": {"$ref": "#/components/schemas/Health"}}}},
                },
            }},
            "/metrics": {"get": {
                "summary": "Prometheus metrics (text exposition format 0.0.4)",
                "operationId": "metrics",
                "responses": {
                    "200": {"description": "Metrics.",
                            "content": {"text/plain": {"schema": {"type": "string"}}}},
                    "501": {"description": "prometheus-client is not installed, or metrics "
                                           "are disabled.",
                            "content": {"text/plain": {"schema": {"type": "string"}}}},
                },
            }},
            "/openapi.json": {"get": {
                "summary": "This document",
                "operationId": "openapi",
                "responses": {"200": {"description": "OpenAPI 3.1 document.",
                                      "content": {"application/json": {}}}},
            }},
            "/v1/ws": {"get": {
                "summary": "WebSocket upgrade: the messaging channel",
                "operationId": "websocket",
                "description": "Binary WebSocket messages, one msgpack frame each "
                               "(docs/protocol.md §9). Maximum message size: the relay's "
                               "max-frame-size.",
                "responses": {
                    "101": {"description": "Switching protocols."},
                    "503": _ERROR | {"description": "Too many connections."},
                },
            }},
            "/v1/blobs/{blob_id}/{expires_at_ms}": {"get": {
                "summary": "Upload/download progress of a blob",
                "operationId": "blobStatus",
                "security": [{"blobToken": []}],
                "parameters": _BLOB_PARAMS,
                "responses": {"200": _STATUS_RESPONSE, "401": _ERROR, "404": _ERROR,
                              "503": _ERROR},
            }},
            "/v1/blobs/{blob_id}/{expires_at_ms}/{index}": {
                "put": {
                    "summary": "Upload one chunk (streamed; idempotent)",
                    "operationId": "putChunk",
                    "description": "Needs an upload token. A chunk is stored whole or not "
                                   "at all: resume an interrupted upload by re-sending the "
                                   "missing chunks. Re-sending identical bytes is accepted.",
                    "security": [{"blobToken": []}],
                    "parameters": chunk_params,
                    "requestBody": {"required": True, "content": {
                        "application/octet-stream": {"schema": {
                            "type": "string", "contentMediaType": "application/octet-stream"}},
                    }},
                    "responses": {"200": _STATUS_RESPONSE, "400": _ERROR, "401": _ERROR,
                                  "404": _ERROR, "409": _ERROR, "413": _ERROR, "503": _ERROR},
                },
                "get": {
                    "summary": "Download one chunk (streamed; Range supported)",
                    "operationId": "getChunk",
                    "security": [{"blobToken": []}],
                    "parameters": [*chunk_params, {
                        "name": "Range", "in": "header", "required": False,
                        "description": "bytes=START-[END] or bytes=-SUFFIX (one range).",
                        "schema": {"type": "string"}}],
                    "responses": {
                        "200": {"description": "The chunk.", "content": {
                            "application/octet-stream": {}}},
                        "206": {"description": "The requested range.", "content": {
                            "application/octet-stream": {}}},
                        "401": _ERROR, "404": _ERROR, "416": _ERROR, "503": _ERROR,
                    },
                },
                "head": {
                    "summary": "Is this chunk stored (and its size)",
                    "operationId": "headChunk",
                    "security": [{"blobToken": []}],
                    "parameters": chunk_params,
                    "responses": {"200": {"description": "Stored; Content-Length is its "
                                                         "size."},
                                  "401": {"description": "Bad token."},
                                  "404": {"description": "Not stored."}},
                },
            },
        },
    }
