package metrics

import (
	"encoding/json"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"go.yaml.in/yaml/v3"

	"github.com/meridian-telemetry/meridian/internal/pipeline"
)

// The dashboard and the alert rules that ship in docs/ must use only what
// the gateway exports: a renamed metric or a label typo would otherwise show
// as an empty panel or an alert that can never fire.

const (
	dashboardFile = "../../docs/grafana/meridian.json"
	alertsFile    = "../../docs/prometheus/alerts.yml"
)

// series is what the real registry exports: metric name → label name →
// values seen (nil for labels whose values are open, like le).
type series map[string]map[string]map[string]bool

// targetLabels are attached by Prometheus to every scraped series.
var targetLabels = []string{"job", "instance"}

// exported builds the registry exactly as serve does and lists its series.
func exported(t *testing.T) series {
	t.Helper()
	reg := prometheus.NewRegistry()
	m := New(reg)
	m.Queue(func() pipeline.Stats { return pipeline.Stats{} })
	m.QueueCapacity(256)
	m.Stream(func() StreamStats { return StreamStats{} })
	m.Links(func() []LinkStats { return []LinkStats{{Name: "xband", Dial: true}} })
	fams, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := series{"up": {}}
	add := func(name string, labels []*dto.LabelPair, extra ...string) {
		if out[name] == nil {
			out[name] = map[string]map[string]bool{}
		}
		for _, lp := range labels {
			if out[name][lp.GetName()] == nil {
				out[name][lp.GetName()] = map[string]bool{}
			}
			out[name][lp.GetName()][lp.GetValue()] = true
		}
		for _, l := range extra {
			out[name][l] = nil
		}
	}
	for _, f := range fams {
		name := f.GetName()
		for _, mt := range f.GetMetric() {
			switch f.GetType() {
			case dto.MetricType_HISTOGRAM:
				add(name+"_bucket", mt.GetLabel(), "le")
				add(name+"_sum", mt.GetLabel())
				add(name+"_count", mt.GetLabel())
			case dto.MetricType_SUMMARY:
				add(name, mt.GetLabel(), "quantile")
				add(name+"_sum", mt.GetLabel())
				add(name+"_count", mt.GetLabel())
			default:
				add(name, mt.GetLabel())
			}
		}
	}
	for name := range out {
		for _, l := range targetLabels {
			out[name][l] = nil
		}
	}
	return out
}

// use is one metric as an expression uses it, with its label matchers.
type use struct {
	metric   string
	matchers []matcher
}

type matcher struct{ label, op, value string }

var (
	// A selector: a metric name, optionally with {matchers}. Function names
	// are told apart by the "(" after them.
	reSelector = regexp.MustCompile(`([a-zA-Z_:][a-zA-Z0-9_:]*)\s*(\{[^}]*\})?`)
	reMatcher  = regexp.MustCompile(`([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"`)
	// Label lists of aggregations and vector matching: by (a, b), on(x)...
	reGrouping = regexp.MustCompile(`\b(by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)`)
	reRange    = regexp.MustCompile(`\[[^\]]*\]`)
	reString   = regexp.MustCompile(`"(?:[^"\\]|\\.)*"`)
	reNumber   = regexp.MustCompile(`^[0-9]`)
)

var promqlWords = map[string]bool{
	"and": true, "or": true, "unless": true, "bool": true, "offset": true,
	"by": true, "without": true, "on": true, "ignoring": true, "group_left": true, "group_right": true,
	"inf": true, "nan": true,
}

// parse extracts the metrics an expression reads, their matchers, and the
// labels it groups by. It is a careful regexp reading of PromQL, enough for
// the expressions we ship; the Prometheus parser is too heavy a dependency
// for this one check.
func parse(t *testing.T, expr string) (uses []use, grouping []string) {
	t.Helper()
	// Grafana's variables are not PromQL: $__rate_interval becomes a range,
	// $instance a value.
	expr = strings.ReplaceAll(expr, "$__rate_interval", "5m")
	expr = regexp.MustCompile(`\$\{?\w+\}?`).ReplaceAllString(expr, "x")
	for _, m := range reGrouping.FindAllStringSubmatch(expr, -1) {
		for l := range strings.SplitSeq(m[2], ",") {
			if l = strings.TrimSpace(l); l != "" {
				grouping = append(grouping, l)
			}
		}
	}
	expr = reGrouping.ReplaceAllString(expr, " ")
	expr = reRange.ReplaceAllString(expr, "")
	for _, loc := range reSelector.FindAllStringSubmatchIndex(expr, -1) {
		name := expr[loc[2]:loc[3]]
		if reNumber.MatchString(name) || promqlWords[strings.ToLower(name)] {
			continue
		}
		// Skip names inside a string or a {} (label names), and numbers like 1e3.
		before := expr[:loc[2]]
		if strings.Count(reString.ReplaceAllString(before, ""), "{") > strings.Count(reString.ReplaceAllString(before, ""), "}") ||
			strings.Count(before, `"`)%2 == 1 {
			continue
		}
		if loc[2] > 0 && (expr[loc[2]-1] >= '0' && expr[loc[2]-1] <= '9' || expr[loc[2]-1] == '.') {
			continue
		}
		rest := strings.TrimLeft(expr[loc[1]:], " \t\n")
		if loc[4] < 0 && strings.HasPrefix(rest, "(") {
			continue // a function call
		}
		u := use{metric: name}
		if loc[4] >= 0 {
			for _, mm := range reMatcher.FindAllStringSubmatch(expr[loc[4]:loc[5]], -1) {
				u.matchers = append(u.matchers, matcher{mm[1], mm[2], mm[3]})
			}
		}
		uses = append(uses, u)
	}
	if len(uses) == 0 {
		t.Errorf("no metric found in %q", expr)
	}
	return uses, grouping
}

// check verifies one expression against the registry, reporting each
// problem to errorf.
func check(t *testing.T, errorf func(string, ...any), where, expr string, reg series) {
	t.Helper()
	uses, grouping := parse(t, expr)
	for _, u := range uses {
		labels, ok := reg[u.metric]
		if !ok {
			errorf("%s: %s is not exported (expression %q)", where, u.metric, expr)
			continue
		}
		for _, m := range u.matchers {
			values, ok := labels[m.label]
			if !ok {
				errorf("%s: %s has no label %q", where, u.metric, m.label)
				continue
			}
			if values == nil || m.op == "!=" || m.op == "!~" {
				continue // open values, or a negative match: nothing to check
			}
			want := []string{m.value}
			if m.op == "=~" {
				want = strings.Split(m.value, "|")
			}
			for _, v := range want {
				if regexp.QuoteMeta(v) != v {
					continue // a real pattern: not a list of values
				}
				if !values[v] {
					errorf("%s: %s{%s} has no value %q (expression %q)", where, u.metric, m.label, v, expr)
				}
			}
		}
	}
	for _, l := range grouping {
		if !slices.ContainsFunc(uses, func(u use) bool { _, ok := reg[u.metric][l]; return ok }) {
			errorf("%s: groups by %q, which none of its metrics has (expression %q)", where, l, expr)
		}
	}
}

func TestAlertRulesUseExportedMetrics(t *testing.T) {
	reg := exported(t)
	b, err := os.ReadFile(alertsFile)
	if err != nil {
		t.Fatal(err)
	}
	var doc struct {
		Groups []struct {
			Name  string
			Rules []struct {
				Alert, Record, Expr string
			}
		}
	}
	if err := yaml.Unmarshal(b, &doc); err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, g := range doc.Groups {
		for _, r := range g.Rules {
			n++
			check(t, t.Errorf, alertsFile+": "+r.Alert+r.Record, r.Expr, reg)
			if strings.Contains(r.Expr, "256") {
				t.Errorf("%s: hard-codes 256; use meridian_queue_capacity_frames", r.Alert)
			}
		}
	}
	if n < 10 {
		t.Errorf("%d rules in %s, want the dozen operations.md recommends", n, alertsFile)
	}
}

func TestDashboardUsesExportedMetrics(t *testing.T) {
	reg := exported(t)
	b, err := os.ReadFile(dashboardFile)
	if err != nil {
		t.Fatal(err)
	}
	type panel struct {
		Title   string
		Targets []struct{ Expr string }
		Panels  json.RawMessage
	}
	var doc struct {
		Panels     []panel
		Templating struct {
			List []struct {
				Name, Definition string
			}
		}
	}
	if err := json.Unmarshal(b, &doc); err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, p := range doc.Panels {
		for _, tg := range p.Targets {
			n++
			check(t, t.Errorf, dashboardFile+": "+p.Title, tg.Expr, reg)
		}
	}
	for _, v := range doc.Templating.List {
		if m := regexp.MustCompile(`label_values\((\w+),\s*(\w+)\)`).FindStringSubmatch(v.Definition); m != nil {
			if _, ok := reg[m[1]][m[2]]; !ok {
				t.Errorf("variable %s: %s has no label %s", v.Name, m[1], m[2])
			}
		}
	}
	if n < 10 {
		t.Errorf("%d panel queries, want more", n)
	}
}

// TestParse: the extractor finds what it must, so the checks above cannot
// pass by finding nothing.
func TestParse(t *testing.T) {
	uses, grouping := parse(t, `histogram_quantile(0.99, sum by (instance, le) (rate(a_bucket{job="x", reason=~"p|q"}[5m]))) > 2
		and on(instance) b / clamp_min(c, 1e3) unless d{le!="1"} offset 5m`)
	var names []string
	for _, u := range uses {
		names = append(names, u.metric)
	}
	if strings.Join(names, " ") != "a_bucket b c d" {
		t.Errorf("metrics %v", names)
	}
	if len(uses[0].matchers) != 2 || uses[0].matchers[1] != (matcher{"reason", "=~", "p|q"}) {
		t.Errorf("matchers %+v", uses[0].matchers)
	}
	if strings.Join(grouping, " ") != "instance le instance" {
		t.Errorf("grouping %v", grouping)
	}
	// And the checks fail on what they must catch.
	reg := exported(t)
	for _, bad := range []string{
		`meridian_sessions_activ`,
		`meridian_sessions_ended_total{cause="x"}`,
		`meridian_rejected_connections_total{reason="server_bussy"}`,
		`sum by (station) (meridian_frames_received_total)`,
	} {
		failed := false
		check(t, func(string, ...any) { failed = true }, "probe", bad, reg)
		if !failed {
			t.Errorf("check passed %q", bad)
		}
	}
}
