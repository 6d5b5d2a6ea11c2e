package ratelimit

import "strconv"

// DefaultMaxOutputTokens is the output allowance EstimateTokens assumes when a
// request names none (max_tokens, max_completion_tokens, max_output_tokens).
const DefaultMaxOutputTokens = 1024

// bytesPerToken is the prompt-size heuristic: about four bytes of text per
// token. It counts UTF-8 bytes rather than characters so that scripts whose
// characters are single tokens (CJK: three bytes each) are not underestimated
// fourfold.
const bytesPerToken = 4

// maxEstimate caps an estimate so that arithmetic on it cannot overflow.
const maxEstimate = 1 << 31

// maxChoices caps the OpenAI n (number of choices) multiplier.
const maxChoices = 128

// promptKeys are the top-level request fields whose text the model reads as
// input, across OpenAI chat/completions/responses/embeddings and Anthropic
// messages: messages, input, prompt, system, instructions, tools.
func promptKey(key []byte) bool {
	switch string(key) {
	case "messages", "input", "prompt", "system", "instructions", "tools":
		return true
	}
	return false
}

func outputKey(key []byte) bool {
	switch string(key) {
	case "max_tokens", "max_completion_tokens", "max_output_tokens":
		return true
	}
	return false
}

// EstimateTokens estimates the model tokens a request body will use, for a
// token-aware limit to reserve before sending:
//
//	⌈prompt text bytes / 4⌉ + output allowance × n
//
// The prompt text is every string value under messages, input, prompt,
// system, instructions and tools (OpenAI and Anthropic request shapes), less
// labels (type, role, ids) and media (image_url, source, data, input_audio,
// file_data: base64 or URLs, not text). The output allowance is max_tokens,
// max_completion_tokens or max_output_tokens, whichever is last, or
// DefaultMaxOutputTokens when none is given; n is OpenAI's number of choices
// (default 1, at most 128).
//
// A body that is not a JSON object is estimated as ⌈len(body)/4⌉ +
// DefaultMaxOutputTokens. EstimateTokens never panics, never allocates, and
// returns at most 2³¹.
func EstimateTokens(body []byte) int {
	s := jsonScanner{b: body}
	output, choices := -1, 1
	if s.peek() != '{' || !s.enter() {
		return fallbackEstimate(body)
	}
	if s.peek() == '}' {
		s.i++
	} else {
		for !s.bad {
			key, ok := s.key()
			if !ok {
				break
			}
			switch {
			case promptKey(key):
				s.value(true)
			case outputKey(key):
				if v, ok := s.intValue(); ok {
					output = v
				}
			case string(key) == "n":
				if v, ok := s.intValue(); ok && v >= 1 {
					choices = min(v, maxChoices)
				}
			default:
				s.value(false)
			}
			if c := s.peek(); c == ',' {
				s.i++
				continue
			} else if c != '}' {
				s.bad = true
			}
			s.i++
			break
		}
	}
	if s.bad {
		return fallbackEstimate(body)
	}
	if output < 0 {
		output = DefaultMaxOutputTokens
	}
	return min(ceilDiv(s.text, bytesPerToken)+output*choices, maxEstimate)
}

func fallbackEstimate(body []byte) int {
	return min(ceilDiv(len(body), bytesPerToken)+DefaultMaxOutputTokens, maxEstimate)
}

func ceilDiv(a, b int) int { return (a + b - 1) / b }

// intValue reads a number value as a non-negative int capped at maxEstimate;
// ok is false for any other value (which is still consumed).
func (s *jsonScanner) intValue() (int, bool) {
	c := s.peek()
	if c != '-' && (c < '0' || c > '9') {
		s.value(false)
		return 0, false
	}
	start := s.i
	s.number()
	if s.bad {
		return 0, false
	}
	f, err := strconv.ParseFloat(string(s.b[start:s.i]), 64)
	if err != nil || f < 0 || f != f {
		return 0, false
	}
	return int(min(f, maxEstimate/maxChoices)), true
}
