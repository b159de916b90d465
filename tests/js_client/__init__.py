"""Support for the client tests: the Node/TypeScript toolchain, test apps, JS scenarios."""
