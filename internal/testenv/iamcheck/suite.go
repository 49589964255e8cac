package iamcheck

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"

	"github.com/circlebot/circlebot/deploy/iam"
)

// Suite collects the sessions of one test binary.
type Suite struct {
	mu       sync.Mutex
	sessions []*Session
}

// Default is the suite Record adds to.
var Default = &Suite{}

func (s *Suite) add(ses *Session) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.sessions = append(s.sessions, ses)
}

// Finding is a call the policy does not allow, or one the recorder could
// not judge.
type Finding struct {
	Test  string
	Call  string // "EC2 CreateTags"
	Check string // the check that failed ("" for a gap)
	Why   string
	Count int // identical findings folded into this one
}

func (f Finding) String() string {
	s := fmt.Sprintf("%s: %s", f.Test, f.Call)
	if f.Check != "" {
		s += ": " + f.Check
	}
	s += ": " + f.Why
	if f.Count > 1 {
		s += fmt.Sprintf(" (%d times)", f.Count)
	}
	return s
}

// Verdict is what evaluating every recorded call found.
type Verdict struct {
	Requests, Checks int
	Findings         []Finding
	// Exercised counts, by Sid, the checks an Allow statement allowed, and
	// the checks a Deny statement was in play for (its action and resource
	// matched, whatever its conditions said).
	Exercised map[string]int
}

// Evaluate judges every call recorded so far against its session's policy.
func (s *Suite) Evaluate() (*Verdict, error) {
	s.mu.Lock()
	sessions := slices.Clone(s.sessions)
	s.mu.Unlock()
	v := &Verdict{Exercised: map[string]int{}}
	seen := map[string]int{} // finding key -> index
	add := func(f Finding) {
		k := f.Test + "\x00" + f.Call + "\x00" + f.Check + "\x00" + f.Why
		if i, ok := seen[k]; ok {
			v.Findings[i].Count++
			return
		}
		f.Count = 1
		seen[k] = len(v.Findings)
		v.Findings = append(v.Findings, f)
	}
	for _, ses := range sessions {
		reqs := ses.Requests()
		if len(reqs) == 0 {
			continue
		}
		if ses.opt.Policy == nil {
			return nil, fmt.Errorf("iamcheck: session of %s has no Policy", ses.opt.Test)
		}
		doc, err := ses.opt.Policy()
		if err != nil {
			return nil, fmt.Errorf("iamcheck: policy for %s: %w", ses.opt.Test, err)
		}
		ev, err := NewEvaluator(doc)
		if err != nil {
			return nil, fmt.Errorf("iamcheck: policy for %s: %w", ses.opt.Test, err)
		}
		for _, r := range reqs {
			v.Requests++
			for _, f := range ev.Judge(r) {
				add(f)
			}
			for _, c := range r.Checks {
				v.Checks++
				d, err := ev.Decide(c)
				if err != nil {
					continue // Judge reported it
				}
				for _, sid := range d.AllowedBy {
					v.Exercised[sid]++
				}
				for _, sid := range d.InPlay {
					v.Exercised[sid]++
				}
			}
		}
	}
	sort.SliceStable(v.Findings, func(i, j int) bool { return v.Findings[i].Test < v.Findings[j].Test })
	return v, nil
}

// Judge returns the findings for one request: its gaps, required resource
// types it was not checked against, and each denied check.
func (ev *Evaluator) Judge(r Request) []Finding {
	var out []Finding
	call := r.String()
	for _, g := range r.Gaps {
		out = append(out, Finding{Test: r.Test, Call: call, Why: "not judged: " + g})
	}
	// Each action the request itself performs (not those AWS checks on
	// its behalf) must be checked against every required resource type.
	types := map[string][]string{}
	for _, c := range r.Checks {
		if c.Implied == "" {
			types[c.Action] = append(types[c.Action], c.Type)
		}
	}
	for action, have := range types {
		req, err := ev.Required(action)
		if err != nil {
			out = append(out, Finding{Test: r.Test, Call: call, Why: err.Error()})
			continue
		}
		for _, t := range req {
			if !slices.Contains(have, t) {
				out = append(out, Finding{Test: r.Test, Call: call, Why: fmt.Sprintf("not judged: %s is authorized against a %s, which the recorder did not name", action, t)})
			}
		}
	}
	for _, c := range r.Checks {
		d, err := ev.Decide(c)
		switch {
		case err != nil:
			out = append(out, Finding{Test: r.Test, Call: call, Check: c.String(), Why: "not judged: " + err.Error()})
		case !d.Allowed:
			out = append(out, Finding{Test: r.Test, Call: call, Check: c.String(), Why: d.Why})
		}
	}
	return out
}

// Unexercised returns the template's statements that no recorded check
// exercised and why.json does not explain, and why.json entries that name
// no statement.
func (v *Verdict) Unexercised(template []byte, why map[string]string) (unexplained, stale []string, err error) {
	p, err := iam.Parse(template)
	if err != nil {
		return nil, nil, err
	}
	sids := map[string]bool{}
	for _, s := range p.Statement {
		sids[s.Sid] = true
		if v.Exercised[s.Sid] == 0 && strings.TrimSpace(why[s.Sid]) == "" {
			unexplained = append(unexplained, s.Sid)
		}
	}
	for sid := range why {
		if !sids[sid] {
			stale = append(stale, sid)
		}
	}
	sort.Strings(stale)
	return unexplained, stale, nil
}

// FinishOptions change what Finish compares the record with.
type FinishOptions struct {
	// Template and Why are the policy template and why.json (default:
	// deploy/iam's).
	Template []byte
	Why      map[string]string
}

// Finish judges the suite after the tests ran (code is m.Run's result)
// and reports to w; it returns the exit code: non-zero when a call was
// denied or not judged, or — on a complete, passing run (no -run, -skip
// or -short) — when a statement no test exercised has no why.
func (s *Suite) Finish(code int, w io.Writer, o FinishOptions) int {
	if o.Template == nil {
		o.Template = iam.Template
	}
	if o.Why == nil {
		why, err := iam.Why()
		if err != nil {
			fmt.Fprintln(w, "iamcheck:", err)
			return 1
		}
		o.Why = why
	}
	v, err := s.Evaluate()
	if err != nil {
		fmt.Fprintln(w, err)
		return 1
	}
	if path := os.Getenv("IAMCHECK_LOG"); path != "" {
		if err := s.WriteLog(path); err != nil {
			fmt.Fprintln(w, "iamcheck:", err)
		}
	}
	failed := false
	if len(v.Findings) > 0 {
		failed = true
		fmt.Fprintf(w, "iamcheck: deploy/iam/policy.json refuses, or the recorder cannot judge, %d of the AWS calls these tests made the bot send:\n", len(v.Findings))
		for _, f := range v.Findings {
			fmt.Fprintln(w, "  "+f.String())
		}
	}
	unexplained, stale, err := v.Unexercised(o.Template, o.Why)
	if err != nil {
		fmt.Fprintln(w, "iamcheck:", err)
		return 1
	}
	if len(stale) > 0 {
		failed = true
		fmt.Fprintf(w, "iamcheck: deploy/iam/why.json explains statements the policy does not have: %s\n", strings.Join(stale, ", "))
	}
	switch {
	case !complete():
		// A partial run exercises part of the policy: say nothing of the rest.
	case code != 0:
		fmt.Fprintln(w, "iamcheck: tests failed: which statements no test exercises is not checked")
	case len(unexplained) > 0:
		failed = true
		fmt.Fprintf(w, "iamcheck: no test exercises these statements of deploy/iam/policy.json, and deploy/iam/why.json does not say why they stay: %s\n", strings.Join(unexplained, ", "))
	}
	if failed {
		return 1
	}
	if testing.Verbose() {
		fmt.Fprintf(w, "iamcheck: %d AWS calls (%d IAM checks) allowed by deploy/iam/policy.json\n", v.Requests, v.Checks)
	}
	return code
}

// WriteLog writes every recorded request with its checks and their
// decisions to path, one JSON object a line (IAMCHECK_LOG=path go test
// …): what the policy is judged on, and a record to judge another policy
// by (ReadLog).
func (s *Suite) WriteLog(path string) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	s.mu.Lock()
	sessions := slices.Clone(s.sessions)
	s.mu.Unlock()
	enc := json.NewEncoder(f)
	for _, ses := range sessions {
		var ev *Evaluator
		if doc, err := ses.opt.Policy(); err == nil {
			ev, _ = NewEvaluator(doc)
		}
		for _, r := range ses.Requests() {
			line := logLine{Request: r}
			for _, c := range r.Checks {
				var d Decision
				if ev != nil {
					if d, err = ev.Decide(c); err != nil {
						d.Why = "not judged: " + err.Error()
					}
				}
				line.Decisions = append(line.Decisions, d)
			}
			if err := enc.Encode(line); err != nil {
				f.Close()
				return err
			}
		}
	}
	return f.Close()
}

type logLine struct {
	Request
	Decisions []Decision `json:"decisions"`
}

// ReadLog reads the requests WriteLog wrote.
func ReadLog(r io.Reader) ([]Request, error) {
	var out []Request
	dec := json.NewDecoder(r)
	for {
		var l logLine
		if err := dec.Decode(&l); err == io.EOF {
			return out, nil
		} else if err != nil {
			return nil, err
		}
		out = append(out, l.Request)
	}
}

// complete: every test of the package ran.
func complete() bool {
	for _, name := range []string{"test.run", "test.skip"} {
		if f := flag.Lookup(name); f != nil && f.Value.String() != "" {
			return false
		}
	}
	return !testing.Short()
}
