"""common/config.py: master.events_window, the event stream's window."""

from __future__ import annotations

import pytest

from common.config import ConfigError, settings_from_dict


def test_events_window_defaults_to_a_week() -> None:
    assert settings_from_dict({}).master.events_window == 7 * 86400


def test_events_window_is_read() -> None:
    assert settings_from_dict({"master": {"events_window": 3600}}).master.events_window == 3600


@pytest.mark.parametrize("value", [0, 59, 366 * 86400 + 1])
def test_events_window_out_of_range_names_the_key(value: int) -> None:
    with pytest.raises(ConfigError) as info:
        settings_from_dict({"master": {"events_window": value}})
    assert info.value.details["key"] == "master.events_window"
    assert "between 60 seconds and 366 days" in str(info.value)


def test_events_window_must_be_an_integer() -> None:
    with pytest.raises(ConfigError) as info:
        settings_from_dict({"master": {"events_window": "a week"}})
    assert info.value.details["key"] == "master.events_window"
