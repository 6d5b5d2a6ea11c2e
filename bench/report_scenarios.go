package bench

import (
	"fmt"
	"io"
	"strings"
)

// section is one scenario's part of a report: a summary line, tables and
// notes, rendered for a terminal or as Markdown.
type section struct {
	title   string
	summary string
	tables  []*table
	notes   []string
}

func (s section) text(w io.Writer) error {
	fmt.Fprintf(w, "\n%s\n\n", s.summary)
	for i, t := range s.tables {
		if i > 0 {
			fmt.Fprintln(w)
		}
		if err := t.text(w); err != nil {
			return err
		}
	}
	if len(s.notes) > 0 {
		fmt.Fprintln(w)
	}
	for _, n := range s.notes {
		fmt.Fprintln(w, n)
	}
	return nil
}

func (s section) markdown(b *strings.Builder) {
	fmt.Fprintf(b, "\n### %s\n\n%s\n\n", s.title, s.summary)
	for i, t := range s.tables {
		if i > 0 {
			b.WriteString("\n")
		}
		t.markdown(b)
	}
	if len(s.notes) > 0 {
		b.WriteString("\n")
	}
	// Notes are a list in Markdown, one line each on a terminal.
	for _, n := range s.notes {
		b.WriteString("- " + n + "\n")
	}
}

func (r *StreamResult) section() section {
	s := r.Settings
	sec := section{title: "Streams", summary: fmt.Sprintf("stream: open loop of %s model-style POSTs a second for %s (warm-up %s), "+
		"each answered with an SSE stream of %d events %s apart, every event stamped by the upstream when written; "+
		"event delay is from that stamp to the event's arrival at the agent, first event from the stream's intended start; "+
		"%d connections; %s; ballast with the overhead chain, its validate policy taking text/event-stream too; nginx with proxy_buffering off",
		fmtCount(s.Rate), s.Duration, s.Warmup, r.Events, r.Interval, s.Connections, procsPhrase(s.Procs))}
	if s.Rounds > 1 {
		sec.summary += fmt.Sprintf("; %d rounds, the targets taking turns, and each figure below is the median over the rounds", s.Rounds)
	}
	sec.summary += "."
	cost := &table{header: []string{"target", "streams", "complete", "events", "CPU ms / 1k events", "CPU ×direct", "upstream CPU ms / 1k events", "peak RSS", "errors"}}
	lat := &table{header: []string{"target", "first event p50 ms", "first event p99 ms", "event delay p50 ms", "event delay p99 ms", "event delay p99.9 ms",
		"added first event p50", "added first event p99", "added event delay p50", "added event delay p99"}}
	// Times are of complete streams only: a target without one has none,
	// and nothing is added to or from it.
	direct := findStreamTarget(r.Targets, TargetDirect)
	directTimed := direct != nil && direct.timed()
	for _, t := range r.Targets {
		l := t.Load
		cpuRatio := "–"
		added := []string{"–", "–", "–", "–"}
		if t.Name != TargetDirect {
			cpuRatio = fmtRatio(t.CPURatio)
			if t.timed() && directTimed {
				added = []string{fmtAdded(t.AddedFirstEvent.P50), fmtAdded(t.AddedFirstEvent.P99), fmtAdded(t.AddedEventDelay.P50), fmtAdded(t.AddedEventDelay.P99)}
			}
		}
		cost.add(t.Name, fmtCount(float64(l.Streams)), fmtPct(l.CompleteRate()), fmtCount(float64(l.Events)), fmt.Sprintf("%.1f", t.CPUPer1kEvents), cpuRatio,
			fmt.Sprintf("%.1f", t.UpstreamCPUPer1kEvents), fmtMiB(t.PeakRSS), fmtErrors(l.Errors))
		times := []string{"–", "–", "–", "–", "–"}
		if t.timed() {
			times = []string{fmtMs(l.FirstEvent.P50), fmtMs(l.FirstEvent.P99), fmtMs(l.EventDelay.P50), fmtMs(l.EventDelay.P99), fmtMs(l.EventDelay.P999)}
		}
		lat.add(append(append([]string{t.Name}, times...), added...)...)
	}
	sec.tables = []*table{cost, lat}
	if len(r.Rounds) > 1 {
		names := make([]string, len(r.Targets))
		for i, t := range r.Targets {
			names[i] = t.Name
		}
		sec.tables = append(sec.tables, perRoundTable("target", "added p99, first event / event delay", names, TargetDirect, r.Rounds,
			func(round []StreamTarget, i int) string {
				if d := findStreamTarget(round, TargetDirect); round[i].timed() && d != nil && d.timed() {
					return fmtAdded(round[i].AddedFirstEvent.P99) + " / " + fmtAdded(round[i].AddedEventDelay.P99)
				}
				return "–"
			}))
	}
	var worst Percentiles
	for _, t := range r.Targets {
		if t.Load.ScheduleLag.P99 > worst.P99 {
			worst = t.Load.ScheduleLag
		}
	}
	sec.notes = append(sec.notes, fmt.Sprintf("The load driver started streams %s ms late at p50 and %s ms at p99 (the worst of the runs above); first-event times include this, event delays do not.",
		fmtMs(worst.P50), fmtMs(worst.P99)))
	sec.notes = append(sec.notes, "bare: "+bareNotStreaming+".")
	for _, name := range sortedKeys(r.Skipped) {
		sec.notes = append(sec.notes, fmt.Sprintf("skipped %s: %s", name, r.Skipped[name]))
	}
	return sec
}

func (p *PoliciesResult) section() section {
	s := p.Settings
	sec := section{title: "Policies", summary: fmt.Sprintf("policies: each policy switched on alone vs plain ballast with everything off (off), "+
		"same upstream (profile none, %d-byte answers); open loop at %s rps for %s per variant (warm-up %s), "+
		"model-style POSTs with a unique body each; %s", s.Size, fmtCount(s.Rate), s.Duration, s.Warmup, ballastProcs(s.Procs))}
	if s.Rounds > 1 {
		sec.summary += fmt.Sprintf("; %d rounds, the variants taking turns, and each figure below is the median over the rounds", s.Rounds)
	}
	sec.summary += "."
	t := &table{header: []string{"variant", "CPU ms / 1k req", "CPU ×off", "p50 ms", "p99 ms", "added p50", "added p99", "peak RSS", "rps", "errors"}}
	for _, v := range p.Variants {
		l := v.Open.All.Latency
		cpuRatio, a50, a99 := "–", "–", "–"
		if v.Name != VariantOff {
			cpuRatio, a50, a99 = fmtRatio(v.CPURatio), fmtAdded(v.AddedLatency.P50), fmtAdded(v.AddedLatency.P99)
		}
		t.add(v.Name, fmt.Sprintf("%.1f", v.CPUPer1k), cpuRatio, fmtMs(l.P50), fmtMs(l.P99), a50, a99,
			fmtMiB(v.PeakRSS), fmtCount(v.Open.RPS), fmtErrors(v.Open.All.Errors))
		sec.notes = append(sec.notes, v.Name+": `"+v.Config+"`")
	}
	sec.tables = []*table{t}
	if len(p.Rounds) > 1 {
		sec.tables = append(sec.tables, p.roundsTable())
	}
	for _, name := range sortedKeys(p.Dropped) {
		sec.notes = append(sec.notes, fmt.Sprintf("dropped %s: config.Parse refused it: %s", name, p.Dropped[name]))
	}
	return sec
}

func (r *StateResult) section() section {
	s := r.Settings
	sec := section{title: "State", summary: fmt.Sprintf("state: POSTs with a fresh Idempotency-Key each (idempotency: {mode: header}) through ballast "+
		"on each state store, vs the same POSTs without a key (unkeyed); closed loop with %d connections for %s per store (warm-up %s); %s",
		s.Connections, s.Duration, s.Warmup, ballastProcs(s.Procs))}
	if s.Rounds > 1 {
		sec.summary += fmt.Sprintf("; %d rounds, the stores taking turns, and each figure below is the median over the rounds", s.Rounds)
	}
	sec.summary += "."
	t := &table{header: []string{"store", "rps", "rps ×unkeyed", "CPU ms / 1k req", "store CPU ms / 1k", "p50 ms", "p99 ms", "peak RSS", "errors"}}
	for _, st := range r.Targets {
		rr, store := "–", "–"
		if st.Name != StoreUnkeyed {
			rr = fmtRatio(st.RPSRatio)
		}
		if st.Name == StoreRedis {
			store = fmt.Sprintf("%.1f", st.StoreCPUPer1k)
		}
		l := st.Load.All.Latency
		t.add(st.Name, fmtCount(st.Load.RPS), rr, fmt.Sprintf("%.1f", st.CPUPer1k), store, fmtMs(l.P50), fmtMs(l.P99),
			fmtMiB(st.PeakRSS), fmtErrors(st.Load.All.Errors))
		sec.notes = append(sec.notes, st.Name+": `"+st.Config+"`")
	}
	sec.tables = []*table{t}
	if len(r.Rounds) > 1 {
		names := make([]string, len(r.Targets))
		for i, st := range r.Targets {
			names[i] = st.Name
		}
		sec.tables = append(sec.tables, perRoundTable("store", "rps ×unkeyed", names, StoreUnkeyed, r.Rounds,
			func(round []StateTarget, i int) string { return fmtRatio(round[i].RPSRatio) }))
	}
	for _, name := range sortedKeys(r.Skipped) {
		sec.notes = append(sec.notes, fmt.Sprintf("skipped %s: %s", name, r.Skipped[name]))
	}
	return sec
}

func (r *SoakResult) section() section {
	s := r.Settings
	sec := section{title: "Soak", summary: fmt.Sprintf("soak: ballast with the %s variant at %s rps open loop for %s (warm-up %s), "+
		"VmRSS sampled every %s; slope is least squares over the second half; %s.", r.Variant, fmtCount(s.Rate), s.Duration, s.Warmup, s.SampleEvery, ballastProcs(s.Procs))}
	l := r.Load.All.Latency
	t := &table{header: []string{"idle RSS", "RSS at start", "max RSS", "RSS at end", "slope MiB/min", "CPU ms / 1k req", "p50 ms", "p99 ms", "requests", "errors"}}
	t.add(fmtMiB(r.IdleRSS), fmtMiB(r.StartRSS), fmtMiB(r.MaxRSS), fmtMiB(r.EndRSS), fmt.Sprintf("%+.2f", r.SlopeMiBPerMin),
		fmt.Sprintf("%.1f", r.CPUPer1k), fmtMs(l.P50), fmtMs(l.P99), fmtCount(float64(r.Load.All.Requests)), fmtErrors(r.Load.All.Errors))
	sec.tables = []*table{t}
	var pts []string
	for _, p := range r.Samples {
		pts = append(pts, fmt.Sprintf("%.0fs %.1f", p.At, float64(p.RSS)/(1<<20)))
	}
	sec.notes = []string{"config: `" + r.Config + "`", "RSS samples (MiB): " + strings.Join(pts, ", ")}
	return sec
}

// roundsTable gives each variant's CPU ×off and added p99 in every round,
// against that round's off: the spread the medians hide.
func (p *PoliciesResult) roundsTable() *table {
	header := []string{"variant"}
	for r := range p.Rounds {
		header = append(header, fmt.Sprintf("CPU ×off, round %d", r+1))
	}
	for r := range p.Rounds {
		header = append(header, fmt.Sprintf("added p99, round %d", r+1))
	}
	t := &table{header: header}
	for i, v := range p.Variants {
		if v.Name == VariantOff {
			continue
		}
		row := []string{v.Name}
		for _, round := range p.Rounds {
			row = append(row, fmtRatio(round[i].CPURatio))
		}
		for _, round := range p.Rounds {
			row = append(row, fmtAdded(round[i].AddedLatency.P99))
		}
		t.add(row...)
	}
	return t
}

// perRoundTable has a row for each of names but baseline (the figures
// are against it) and a column "LABEL, round K" for each round, the cell
// of target i in a round given by cell.
func perRoundTable[T any](first, label string, names []string, baseline string, rounds [][]T, cell func(round []T, i int) string) *table {
	t := &table{header: []string{first}}
	for k := range rounds {
		t.header = append(t.header, fmt.Sprintf("%s, round %d", label, k+1))
	}
	for i, name := range names {
		if name == baseline {
			continue
		}
		row := []string{name}
		for _, round := range rounds {
			row = append(row, cell(round, i))
		}
		t.add(row...)
	}
	return t
}
