"""Settings written as text: the probe's step sizes (``landscape.config.parse_etas``)."""

import pytest

from landscape.config import parse_etas


def test_parse_etas():
    assert parse_etas("0.05:0.4:8") == pytest.approx([0.05 + 0.05 * i for i in range(8)])
    assert parse_etas("0.1,0.2") == (0.1, 0.2)
