"""Settings read from the environment: defaults when a variable is unset or empty, and the
relay's knobs (read by ``workers.relay`` through ``Settings``)."""

from __future__ import annotations

import pytest

from feed.config import Settings


def test_unset_and_empty_variables_take_the_defaults(tmp_path):
    for env in ({}, {"PROJECTION_CHUNK": "", "RELAY_LINGER_MS": "", "FEED_SIZE": ""}):
        settings = Settings.from_env({"FEED_DATA_DIR": str(tmp_path), **env})
        assert settings.projection_chunk == 50
        assert settings.relay_linger_ms == 5.0
        assert settings.relay_max_backoff_seconds == 10.0
        assert settings.feed_size == 800


def test_relay_knobs_come_from_the_environment(tmp_path):
    settings = Settings.from_env(
        {
            "FEED_DATA_DIR": str(tmp_path),
            "PROJECTION_CHUNK": "7",
            "RELAY_LINGER_MS": "0.5",
            "RELAY_MAX_BACKOFF_SECONDS": "1",
            "MODERATION_FAILURE_RATE": "0.25",
        }
    )
    assert settings.projection_chunk == 7
    assert settings.relay_linger_ms == 0.5
    assert settings.relay_max_backoff_seconds == 1.0
    assert settings.moderation_failure_rate == 0.25


def test_a_chunk_below_one_event_is_one_event(tmp_path):
    settings = Settings.from_env({"FEED_DATA_DIR": str(tmp_path), "PROJECTION_CHUNK": "0"})
    assert settings.projection_chunk == 1


def test_a_malformed_number_stops_the_start(tmp_path):
    with pytest.raises(ValueError):
        Settings.from_env({"FEED_DATA_DIR": str(tmp_path), "RELAY_LINGER_MS": "soon"})


def test_held_connections_are_on_unless_turned_off(tmp_path):
    assert Settings.from_env({"FEED_DATA_DIR": str(tmp_path)}).redis_held_connections
    off = Settings.from_env({"FEED_DATA_DIR": str(tmp_path), "REDIS_HELD_CONNECTIONS": "false"})
    assert not off.redis_held_connections


def test_the_http_edge_settings_come_from_the_environment(tmp_path):
    settings = Settings.from_env(
        {
            "FEED_DATA_DIR": str(tmp_path),
            "RATE_LIMIT_ACCOUNT_READS": "5/second",
            "TRUSTED_PROXIES": "2",
            "PUBLIC_BASE_URL": "https://feed.example/social/",
            "METRICS_TOKEN": "scrape-me",
            "METRICS_PORT": "9464",
            "READY_CHECK_SECONDS": "0.5",
            "METRICS_CACHE_SECONDS": "30",
        }
    )
    assert settings.rate_limit_account_reads == "5/second"
    assert settings.trusted_proxies == 2
    assert settings.public_base_url == "https://feed.example/social"
    assert (settings.metrics_token, settings.metrics_port) == ("scrape-me", 9464)
    assert (settings.ready_check_seconds, settings.metrics_cache_seconds) == (0.5, 30.0)
    assert "scrape-me" not in repr(settings)
