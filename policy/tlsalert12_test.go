package policy

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"testing"
)

// Which TLS alerts end an upstream's attempts (Deterministic), as the
// dial wraps them: ErrTLSHandshake, the alert it read off the records,
// then crypto/tls's own error. Whoever sent it, only protocol_version and
// insufficient_security are deterministic; every alert stays a transient
// connect-failure for the breaker and the retry safety rules.
func TestTLSAlertDeterminism(t *testing.T) {
	wrap := func(alert uint8, remote bool) error {
		return fmt.Errorf("%w: %w: %w", ErrTLSHandshake, &TLSAlertError{Alert: alert, Remote: remote},
			&net.OpError{Op: "remote error", Err: tls.AlertError(alert)})
	}
	for _, tt := range []struct {
		name          string
		err           error
		deterministic bool
		text          string
	}{
		{"protocol_version from the upstream", wrap(AlertProtocolVersion, true), true,
			"TLS alert protocol_version from the upstream: the upstream and ballast share no TLS version (ballast requires TLS 1.2 or later)"},
		{"protocol_version from ballast", wrap(AlertProtocolVersion, false), true,
			"TLS alert protocol_version from ballast: the upstream and ballast share no TLS version (ballast requires TLS 1.2 or later)"},
		{"insufficient_security", wrap(AlertInsufficientSecurity, true), true,
			"TLS alert insufficient_security from the upstream: the upstream requires cipher suites ballast does not offer"},
		{"handshake_failure: also sent for failures of the moment", wrap(AlertHandshakeFailure, true), false,
			"TLS alert handshake_failure from the upstream"},
		{"internal_error", wrap(80, true), false, "TLS alert 80 from the upstream"},
		{"unrecognized_name", wrap(112, true), false, "TLS alert 112 from the upstream"},
		{"bad_certificate from ballast (TLS 1.2)", wrap(42, false), false, "TLS alert 42 from ballast"},
		{"an alert crypto/tls reports without the dial's reading", &net.OpError{Op: "remote error", Err: tls.AlertError(AlertProtocolVersion)}, false, ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if got := Deterministic(tt.err); got != tt.deterministic {
				t.Errorf("Deterministic(%v) = %v, want %v", tt.err, got, tt.deterministic)
			}
			if class, cause := ClassifyError(tt.err); class != Transient || cause != CauseConnect {
				t.Errorf("ClassifyError(%v) = %s %s, want transient connect-failure", tt.err, class, cause)
			}
			if a, ok := errors.AsType[*TLSAlertError](tt.err); ok && a.Error() != tt.text {
				t.Errorf("text %q, want %q", a.Error(), tt.text)
			}
		})
	}
}
