//! Tests for the gemini plugin (being written).
