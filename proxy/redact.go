package proxy

import (
	"net"
	"strings"
)

// requestBytesHidden stands in for a quoted string of request bytes.
const requestBytesHidden = `"<request bytes not shown>"`

// redactQuotedRequests replaces, in a fasthttp message, every quoted
// string that spans lines (`cannot find whitespace in the first line of
// request "GET /x\r\nAuthorization: ..."`) with a placeholder: those are
// request bytes, credentials included. SecureErrorLogMessage hides them in
// most of fasthttp's messages, not all. Short quoted values (addresses)
// stay, and so does an unterminated quote. A problem's detail reaches SDK
// exceptions and agent transcripts, and the log reaches whoever reads it.
func redactQuotedRequests(msg string) string {
	if !strings.Contains(msg, `\n`) {
		return msg
	}
	return rewriteQuoted(msg, func(quoted string) bool { return !strings.Contains(quoted, `\n`) }, false)
}

// redactRequestBytes hides, in a fasthttp message, every quoted string but
// an address ("127.0.0.1:8080"): besides whole requests
// (redactQuotedRequests), fasthttp quotes single header values it cannot
// parse (`invalid header value "Bearer sk-..."`), and those are request
// bytes too, credentials included. An unterminated quote is hidden to the
// end of the message.
func redactRequestBytes(msg string) string {
	msg = redactQuotedRequests(msg)
	if !strings.Contains(msg, `"`) {
		return msg
	}
	return rewriteQuoted(msg, func(quoted string) bool {
		return isAddress(quoted) || `"`+quoted+`"` == requestBytesHidden
	}, true)
}

// rewriteQuoted copies msg with each quoted string (between double
// quotes, a backslash escaping the next byte) kept when keep says so of
// what is between its quotes, and replaced by requestBytesHidden
// otherwise. A quote left open at the end is kept as it is, or, with
// hideOpen, replaced together with everything after it.
func rewriteQuoted(msg string, keep func(quoted string) bool, hideOpen bool) string {
	var b strings.Builder
	for {
		open := strings.IndexByte(msg, '"')
		if open < 0 {
			break
		}
		end := open + 1
		for end < len(msg) && msg[end] != '"' {
			if msg[end] == '\\' {
				end++
			}
			end++
		}
		if end >= len(msg) {
			if hideOpen {
				b.WriteString(msg[:open])
				b.WriteString(requestBytesHidden)
				return b.String()
			}
			break
		}
		b.WriteString(msg[:open])
		if keep(msg[open+1 : end]) {
			b.WriteString(msg[open : end+1])
		} else {
			b.WriteString(requestBytesHidden)
		}
		msg = msg[end+1:]
	}
	b.WriteString(msg)
	return b.String()
}

// isAddress reports whether s is a host:port with a numeric host (an IP,
// as fasthttp names connections) and port.
func isAddress(s string) bool {
	host, port, err := net.SplitHostPort(s)
	if err != nil || port == "" || host == "" {
		return false
	}
	for _, c := range port {
		if c < '0' || c > '9' {
			return false
		}
	}
	return net.ParseIP(host) != nil
}
