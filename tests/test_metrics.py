"""ACME request paths become few label values: object IDs are scrubbed, kinds are kept."""

from __future__ import annotations

import pytest

from certctl.runtime.metrics import acme_path


@pytest.mark.parametrize(
    ("url", "path"),
    [
        ("https://127.0.0.1:14000/order-plz", "/order-plz"),
        ("https://127.0.0.1:14000/nonce-plz", "/nonce-plz"),
        ("https://127.0.0.1:14000/my-order/Hgy6o_Qq26cMEAQ6azRZTMkCe7aT3MbY1q", "/my-order/*"),
        ("https://acme-v02.api.letsencrypt.org/acme/order/1234567/89012345", "/acme/order/*/*"),
        ("https://acme-v02.api.letsencrypt.org/acme/new-order", "/acme/new-order"),
        ("https://acme-v02.api.letsencrypt.org/acme/chall-v3/4242/Ab3dEf", "/acme/chall-v3/*/*"),
        ("https://acme-v02.api.letsencrypt.org/directory", "/directory"),
    ],
)
def test_acme_paths_keep_the_kind_of_request_and_drop_object_ids(url: str, path: str) -> None:
    assert acme_path(url) == path
