// Package bench is ballast's benchmark harness (`ballast bench`): a chaos
// upstream with seedable faults and side-effect counters, a bare fasthttp
// proxy as the library floor, an open-loop (coordinated-omission-free) and
// closed-loop load driver recording into HdrHistograms, and the overhead
// and chaos scenarios, which run every process under test as a child so
// its CPU and RSS can be read from /proc. See README.md.
package bench
