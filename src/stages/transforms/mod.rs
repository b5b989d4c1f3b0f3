//! Built-in transforms: stages that change, enrich or drop events on their way to the sinks.
