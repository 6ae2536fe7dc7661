"""Files and formats: the weights registry and cache, downloads, safe checkpoint reading,
and the adapters file. Imports no model code."""
