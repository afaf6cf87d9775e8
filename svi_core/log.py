"""The project's one named logger. Library code logs through it and never prints."""

import logging

logger = logging.getLogger("svi")
