"""The upstream pool: its file, the model every layer reads, work windows and the routing order."""
