"""melsml: mixed-effects location scale models by exact maximum likelihood."""
