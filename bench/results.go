package bench

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

// The harness owns the part of RESULTS.md between these markers; the rest
// (hand-written sections) is preserved.
const (
	MarkerBegin = "<!-- harness:begin -->"
	MarkerEnd   = "<!-- harness:end -->"
)

// Files WriteOut writes into its directory.
const (
	ResultsFile = "RESULTS.md"
	JSONFile    = "harness.json"
	PlotFile    = "harness-latency.svg"
)

// SpliceSection returns doc with the text between MarkerBegin and MarkerEnd
// replaced by section, or with a delimited section appended when doc has
// no markers.
func SpliceSection(doc, section []byte) ([]byte, error) {
	block := append(append(append([]byte(MarkerBegin+"\n"), section...), '\n'), MarkerEnd...)
	b := bytes.Index(doc, []byte(MarkerBegin))
	e := bytes.Index(doc, []byte(MarkerEnd))
	switch {
	case b < 0 && e < 0:
		out := bytes.TrimRight(doc, "\n")
		if len(out) > 0 {
			out = append(out, "\n\n"...)
		}
		return append(append(out, block...), '\n'), nil
	case b < 0 || e < b:
		return nil, fmt.Errorf("bench: %s: markers %s and %s are unbalanced", ResultsFile, MarkerBegin, MarkerEnd)
	}
	out := append([]byte{}, doc[:b]...)
	out = append(out, block...)
	return append(out, doc[e+len(MarkerEnd):]...), nil
}

// WriteOut writes the report into dir: harness.json, harness-latency.svg
// (when overhead ran), and the harness section of RESULTS.md, keeping the
// rest of that file as it is.
func (r *Report) WriteOut(dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("bench: %w", err)
	}
	var js bytes.Buffer
	if err := r.WriteJSON(&js); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, JSONFile), js.Bytes(), 0o644); err != nil {
		return fmt.Errorf("bench: %w", err)
	}
	plot := ""
	if r.Overhead != nil && len(r.Overhead.Targets) > 0 {
		var svg bytes.Buffer
		if err := r.Overhead.WriteLatencyPlot(&svg); err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(dir, PlotFile), svg.Bytes(), 0o644); err != nil {
			return fmt.Errorf("bench: %w", err)
		}
		plot = PlotFile
	}
	path := filepath.Join(dir, ResultsFile)
	doc, err := os.ReadFile(path)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("bench: %w", err)
	}
	out, err := SpliceSection(doc, r.Markdown(plot))
	if err != nil {
		return err
	}
	if err := os.WriteFile(path, out, 0o644); err != nil {
		return fmt.Errorf("bench: %w", err)
	}
	return nil
}
