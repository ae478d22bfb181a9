//! Tests for the anthropic plugin (being written).
