"""The services of a process that runs the sagas beside the feed (the API, the workers, the
CLI): the feed's own, given what the sagas add below HTTP. ``feed`` never imports ``sagas``;
this is where the two meet."""

from __future__ import annotations

from feed.bootstrap import Services
from feed.bootstrap import build_services as build_feed_services
from feed.commands import PublishWithMedia
from feed.config import Settings
from sagas.commands import publish_with_media
from sagas.services.feed import PROMOTED_PLACEMENTS


def build_services(settings: Settings) -> Services:
    """The feed's services with the promoted posts among the home feeds' sources, and the
    saga that publishes a post with media as that command's handler."""
    services = build_feed_services(settings, placements=[PROMOTED_PLACEMENTS])
    services.handlers[PublishWithMedia] = publish_with_media
    return services
