// Package e2e holds ballast's end-to-end tests: real agent clients — the
// official OpenAI, Anthropic and MCP Go SDKs, and a plain net/http client
// using HTTP_PROXY — pointed at an in-process ballast by base URL alone,
// against loopback upstreams that speak each API's wire format and inject
// faults. It also checks that the files in examples/ load and reference
// ports, paths and flags that exist.
//
// The package has no non-test code; this file only documents it.
package e2e
