"""Where state is kept. Each store implements a protocol of the layer that uses it."""
