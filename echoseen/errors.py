"""The product's exception tree and the exit status each kind of failure maps to."""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILED = 1  # the command ran and found a problem (verify mismatch, lag over threshold)
EXIT_CONFIG = 2  # invalid configuration or arguments
EXIT_UNAVAILABLE = 3  # a service could not be reached or refused the credentials
EXIT_INTERRUPTED = 130


class EchoseenError(Exception):
    """Base of the errors this product raises on purpose; the message is meant for an operator."""

    exit_status = EXIT_FAILED


class ConfigError(EchoseenError, ValueError):
    """A configuration value is missing, unknown or invalid; the message names the setting and the fix."""

    exit_status = EXIT_CONFIG


class ServiceUnavailable(EchoseenError):
    """Redis, Kafka or Kask could not be reached, or rejected the credentials."""

    exit_status = EXIT_UNAVAILABLE
