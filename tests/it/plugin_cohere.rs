//! Tests for the cohere plugin (being written).
