package e2e

import (
	"fmt"
	"strings"
	"time"
)

// modelRoute is the route config the model tests use: POSTs are safe to
// repeat for model APIs (retry.unsafe_methods), backoff is short so the
// suite stays fast, and hints up to 5s are honoured. extraRetry is added
// inside the retry block (", on: [...]"); extraRoute is added as more keys
// of the route (indented with four spaces).
func modelRoute(name, upstream string, perTry time.Duration, extraRetry, extraRoute string) string {
	if perTry == 0 {
		perTry = 5 * time.Second
	}
	return fmt.Sprintf(`
listen: 127.0.0.1:0
routes:
  - name: %s
    match: {path_prefix: /%s/}
    upstream: %s/
    strip_prefix: true
    retry: {unsafe_methods: true, backoff: {base: 1ms, max: 5ms}, max_retry_after: 5s%s}
    timeouts: {connect: 1s, per_try: %s, idle: 2s, total: 10s}
%s`, name, name, upstream, extraRetry, perTry, strings.TrimRight(extraRoute, "\n"))
}
