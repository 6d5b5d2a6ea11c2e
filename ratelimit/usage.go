package ratelimit

import (
	"bytes"
	"encoding/json"
	"errors"
)

// Usage is the token usage a model API reports in a response.
type Usage struct {
	// Input is prompt_tokens (OpenAI chat/completions) or else input_tokens
	// (OpenAI responses, Anthropic), plus Anthropic's
	// cache_creation_input_tokens (cached reads are not counted, as
	// Anthropic's input rate limits do not count them).
	Input int
	// Output is completion_tokens or output_tokens.
	Output int
	// Total is total_tokens when the response reports it, else zero.
	Total int
}

// Tokens is the units to settle a token-aware reservation with: Total when
// reported, else Input+Output.
func (u Usage) Tokens() int {
	if u.Total > 0 {
		return u.Total
	}
	return u.Input + u.Output
}

// usageFields are the usage members of OpenAI and Anthropic responses; nil
// means absent.
type usageFields struct {
	PromptTokens        *float64 `json:"prompt_tokens"`
	CompletionTokens    *float64 `json:"completion_tokens"`
	TotalTokens         *float64 `json:"total_tokens"`
	InputTokens         *float64 `json:"input_tokens"`
	OutputTokens        *float64 `json:"output_tokens"`
	CacheCreationTokens *float64 `json:"cache_creation_input_tokens"`
}

// usageEnvelope finds usage at the top level (responses, OpenAI stream
// chunks, Anthropic message_delta), under message (Anthropic message_start)
// and under response (OpenAI responses stream, response.completed).
type usageEnvelope struct {
	Usage   *usageFields `json:"usage"`
	Message *struct {
		Usage *usageFields `json:"usage"`
	} `json:"message"`
	Response *struct {
		Usage *usageFields `json:"usage"`
	} `json:"response"`
}

// UsageFromBody reads token usage from a model API response: either a JSON
// body, or the tail of a server-sent event stream (the last data line or
// lines, "data: [DONE]" included or not). For a stream, fields from later
// events replace those from earlier ones, so Anthropic's message_start (input
// tokens) and message_delta (output tokens) combine. ok is false when no
// usage was found. Malformed JSON, or malformed events, are skipped; it never
// panics. A negative count is skipped as if absent (a usage of only negative
// counts is no usage), and a fraction is rounded down.
func UsageFromBody(body []byte) (u Usage, ok bool) {
	return UsageFromParts(body)
}

// UsageFromParts reads token usage from pieces of one response, in order:
// typically a long stream's first bytes and its last ones, the bytes between
// them dropped. Each part is read as UsageFromBody reads a body, and fields
// from later parts replace those from earlier ones, so an Anthropic stream's
// input tokens (message_start, at its head) and output tokens
// (message_delta, at its tail) combine. The parts should not share bytes;
// an event seen in two of them is still counted once, as fields are
// replaced, never added. An event cut by a part's edge is skipped as
// malformed. ok is false when no part holds usage; with no parts, there is
// none.
func UsageFromParts(parts ...[]byte) (u Usage, ok bool) {
	var acc usageFields
	for _, part := range parts {
		if mergeBody(&acc, part) {
			ok = true
		}
	}
	if !ok {
		return Usage{}, false
	}
	return acc.usage(), true
}

// mergeBody merges the usage of a JSON body or of server-sent events into
// acc, reporting whether there was any.
func mergeBody(acc *usageFields, body []byte) bool {
	if trimmed := bytes.TrimLeft(body, " \t\r\n"); len(trimmed) > 0 && trimmed[0] == '{' {
		return mergeUsage(acc, trimmed)
	}
	return eachEventData(body, func(data []byte) bool { return mergeUsage(acc, data) })
}

// mergeUsage parses one JSON payload and copies the usage fields it holds
// into acc, reporting whether there were any.
func mergeUsage(acc *usageFields, data []byte) bool {
	var env usageEnvelope
	if err := json.Unmarshal(data, &env); err != nil {
		var typeErr *json.UnmarshalTypeError
		if !errors.As(err, &typeErr) {
			return false
		}
	}
	found := false
	for _, f := range []*usageFields{env.Usage, messageUsage(&env), responseUsage(&env)} {
		if f != nil && acc.merge(f) {
			found = true
		}
	}
	return found
}

func messageUsage(env *usageEnvelope) *usageFields {
	if env.Message == nil {
		return nil
	}
	return env.Message.Usage
}

func responseUsage(env *usageEnvelope) *usageFields {
	if env.Response == nil {
		return nil
	}
	return env.Response.Usage
}

func (acc *usageFields) merge(f *usageFields) bool {
	found := false
	for _, p := range []struct{ dst, src **float64 }{
		{&acc.PromptTokens, &f.PromptTokens},
		{&acc.CompletionTokens, &f.CompletionTokens},
		{&acc.TotalTokens, &f.TotalTokens},
		{&acc.InputTokens, &f.InputTokens},
		{&acc.OutputTokens, &f.OutputTokens},
		{&acc.CacheCreationTokens, &f.CacheCreationTokens},
	} {
		// A negative count is no count: it neither replaces an earlier
		// one nor counts as usage found, so that an upstream's nonsense
		// cannot refund a reservation.
		if *p.src != nil && **p.src >= 0 {
			*p.dst = *p.src
			found = true
		}
	}
	return found
}

func (acc *usageFields) usage() Usage {
	u := Usage{Total: count(acc.TotalTokens)}
	u.Input = min(count(first(acc.PromptTokens, acc.InputTokens))+count(acc.CacheCreationTokens), maxEstimate)
	u.Output = count(first(acc.CompletionTokens, acc.OutputTokens))
	return u
}

// first is the OpenAI chat name's count when reported, else the other's.
func first(chat, other *float64) *float64 {
	if chat != nil {
		return chat
	}
	return other
}

// count converts a reported count to an int in [0, maxEstimate].
func count(f *float64) int {
	if f == nil || !(*f > 0) {
		return 0
	}
	return int(min(*f, maxEstimate))
}

// eachEventData calls fn with the data of each server-sent event in stream
// (data lines of one event joined by newlines, per the SSE format), skipping
// "[DONE]", and reports whether any call returned true. Lines end at LF,
// CRLF or a lone CR; a "data" line without a colon adds an empty line to
// the event's data; a byte order mark at the start is skipped (WHATWG HTML
// §9.2.6). Text before the first line break may be the cut-off end of a
// line and is read like any other, and the event pending at the end is
// dispatched. It allocates only to join an event of several data lines.
func eachEventData(stream []byte, fn func(data []byte) bool) bool {
	found := false
	var joined []byte // only for events with several data lines
	var single []byte
	lines := 0
	flush := func() {
		data := single
		if lines > 1 {
			data = joined
		}
		if lines > 0 && !bytes.Equal(bytes.TrimSpace(data), []byte("[DONE]")) && fn(data) {
			found = true
		}
		lines, single, joined = 0, nil, joined[:0]
	}
	stream = bytes.TrimPrefix(stream, []byte("\xef\xbb\xbf"))
	// lf is the index of the first LF at or after pos, or len(stream) when
	// there is none: searched once per LF, so that a stream of lone CRs is
	// not searched to its end at every line.
	lf := -1
	for pos := 0; pos < len(stream); {
		if lf < pos {
			lf = bytes.IndexByte(stream[pos:], '\n')
			if lf < 0 {
				lf = len(stream)
			} else {
				lf += pos
			}
		}
		end := lf
		if cr := bytes.IndexByte(stream[pos:lf], '\r'); cr >= 0 {
			end = pos + cr
		}
		line := stream[pos:end]
		pos = end + 1
		if end < len(stream) && stream[end] == '\r' && pos < len(stream) && stream[pos] == '\n' {
			pos++ // CRLF: one line end
		}
		if len(line) == 0 {
			flush()
			continue
		}
		data, isData := bytes.CutPrefix(line, []byte("data:"))
		if !isData {
			if string(line) != "data" {
				continue
			}
			data = nil // a field name alone: its value is empty
		}
		data = bytes.TrimPrefix(data, []byte(" "))
		switch lines {
		case 0:
			single = data
		case 1:
			joined = append(append(append(joined[:0], single...), '\n'), data...)
		default:
			joined = append(append(joined, '\n'), data...)
		}
		lines++
	}
	flush()
	return found
}
