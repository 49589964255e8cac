// Package iamcheck tells, in the tests, whether the bot's IAM policy
// (deploy/iam/policy.json) allows every AWS call the bot makes. A
// middleware on the bot's aws.Config records each request — the IAM
// action, the ARN of every resource it is authorized against, the tags
// those resources carry and the tags it sets, and what AWS checks on the
// caller's behalf (the ec2:CreateTags of TagSpecifications, iam:PassRole,
// KMS through EC2 and S3) — and an evaluator decides each against the
// policy rendered for the test's config, with IAM's rules for an
// identity policy: an explicit Deny wins, else an Allow is needed; Action
// and NotAction, Resource and NotResource with wildcards; conditions with
// the string, ARN, Bool and Null operators, IfExists, ForAllValues and
// ForAnyValue; a condition key is in the context of a resource only where
// the Service Authorization Reference says the action and that resource
// type carry it (testdata/sar.json).
//
// What it does not model: other policies (SCPs, permission boundaries,
// session policies, resource policies such as a KMS key policy or a bucket
// policy), policy variables, the Numeric, Date, IpAddress and Binary
// operators, and global context keys other than those a request sets.
package iamcheck

import (
	"fmt"
	"slices"
	"sort"
	"strings"

	"github.com/circlebot/circlebot/deploy/iam"
)

// Check is one authorization IAM makes for a request: an action on one
// resource with its context.
type Check struct {
	Action   string // "ec2:StopInstances"
	Type     string // the Reference's resource type ("instance"); "" for an action with none
	Resource string // the ARN, or "*" for an action with no resource type
	// Context holds the condition keys for this resource, as AWS names
	// them ("aws:ResourceTag/Name"); multivalued keys (aws:TagKeys) have
	// several values.
	Context map[string][]string
	// Implied says why AWS makes this check although the request names
	// another action ("TagSpecifications", "KMS through EC2").
	Implied string
}

func (c Check) String() string {
	s := c.Action + " on " + c.Resource
	if c.Implied != "" {
		s += " (" + c.Implied + ")"
	}
	if len(c.Context) > 0 {
		keys := make([]string, 0, len(c.Context))
		for k := range c.Context {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		var parts []string
		for _, k := range keys {
			parts = append(parts, k+"="+strings.Join(c.Context[k], ","))
		}
		s += " [" + strings.Join(parts, " ") + "]"
	}
	return s
}

// Decision is the outcome of one check.
type Decision struct {
	Allowed bool
	// AllowedBy names the Allow statements that matched.
	AllowedBy []string
	// DeniedBy is the Deny statement that matched (explicit deny).
	DeniedBy string
	// Why says, for a denied check, what is missing: no statement names
	// the action, or how each statement that names it fails to match.
	Why string
	// InPlay lists the Deny statements whose action and resource matched,
	// whatever their conditions said: they were checked.
	InPlay []string
}

// Evaluator decides checks against one rendered policy.
type Evaluator struct {
	Policy iam.Policy
	SAR    *SAR
}

// NewEvaluator parses a rendered policy document.
func NewEvaluator(doc []byte) (*Evaluator, error) {
	p, err := iam.Parse(doc)
	if err != nil {
		return nil, err
	}
	s, err := Reference()
	if err != nil {
		return nil, err
	}
	for _, st := range p.Statement {
		for _, a := range append(slices.Clone(st.Action.Values), st.NotAction.Values...) {
			if strings.ContainsAny(a, "*?") {
				continue
			}
			if _, _, err := s.Action(a); err != nil {
				return nil, fmt.Errorf("statement %s: %w", st.Sid, err)
			}
		}
		for op, keys := range st.Condition {
			if _, err := parseOperator(op); err != nil {
				return nil, fmt.Errorf("statement %s: %w", st.Sid, err)
			}
			for k, vals := range keys {
				for _, v := range vals.Values {
					if strings.Contains(v, "${") {
						return nil, fmt.Errorf("statement %s: %s = %q: policy variables are not modelled", st.Sid, k, v)
					}
				}
			}
		}
	}
	return &Evaluator{Policy: p, SAR: s}, nil
}

// Validate checks that c is a check IAM could make: a known action, a
// resource type the action is authorized against and an ARN of that
// type's format.
func (e *Evaluator) Validate(c Check) error {
	a, _, err := e.SAR.Action(c.Action)
	if err != nil {
		return err
	}
	if c.Type == "" {
		if len(a.ResourceTypes) > 0 && c.Resource != "*" {
			return fmt.Errorf("%s on %s: no resource type given", c.Action, c.Resource)
		}
		if c.Resource != "*" {
			return fmt.Errorf("%s has no resource type: its resource is \"*\", not %s", c.Action, c.Resource)
		}
		return nil
	}
	if _, ok := a.target(c.Type); !ok {
		var names []string
		for _, t := range a.ResourceTypes {
			names = append(names, t.Name)
		}
		return fmt.Errorf("%s is not authorized against resource type %q (its types: %s)", c.Action, c.Type, strings.Join(names, ", "))
	}
	svc, _, _ := strings.Cut(c.Action, ":")
	// An action's resource type may belong to another service (ssm's
	// "instance" is an EC2 ARN): find its format where it is defined.
	for _, s := range []string{strings.ToLower(svc), arnService(c.Resource)} {
		if ok, format := e.SAR.arnFits(s, c.Type, c.Resource); format != "" {
			if !ok {
				return fmt.Errorf("%s: %s does not have the format of a %s (%s)", c.Action, c.Resource, c.Type, format)
			}
			return nil
		}
	}
	return fmt.Errorf("%s: the Reference has no ARN format for %q", c.Action, c.Type)
}

func arnService(arn string) string {
	parts := strings.SplitN(arn, ":", 4)
	if len(parts) < 3 {
		return ""
	}
	return parts[2]
}

// Required returns the resource types the action must be authorized
// against in every request (the Reference's required types).
func (e *Evaluator) Required(action string) ([]string, error) {
	a, _, err := e.SAR.Action(action)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, t := range a.ResourceTypes {
		if t.Required {
			out = append(out, t.Name)
		}
	}
	return out, nil
}

// Decide evaluates one check. The check's context is first cut to the
// keys the Reference gives the action and resource type.
func (e *Evaluator) Decide(c Check) (Decision, error) {
	if err := e.Validate(c); err != nil {
		return Decision{}, err
	}
	a, _, _ := e.SAR.Action(c.Action)
	ctx := map[string][]string{}
	for k, v := range c.Context {
		if a.keyApplies(c.Type, k) {
			ctx[strings.ToLower(k)] = v
		}
	}
	var d Decision
	var misses []string
	for _, st := range e.Policy.Statement {
		if !actionMatches(st, c.Action) {
			continue
		}
		if !resourceMatches(st, c.Resource) {
			if st.Effect == "Allow" {
				misses = append(misses, fmt.Sprintf("%s: its resources %s do not cover %s", st.Sid, resourcesOf(st), c.Resource))
			}
			continue
		}
		if st.Effect == "Deny" {
			d.InPlay = append(d.InPlay, st.Sid)
		}
		ok, why, err := conditionsHold(st.Condition, ctx)
		if err != nil {
			return Decision{}, fmt.Errorf("statement %s: %w", st.Sid, err)
		}
		if !ok {
			if st.Effect == "Allow" {
				misses = append(misses, fmt.Sprintf("%s: %s", st.Sid, why))
			}
			continue
		}
		if st.Effect == "Deny" {
			d.Allowed, d.DeniedBy, d.AllowedBy = false, st.Sid, nil
			d.Why = fmt.Sprintf("explicitly denied by %s", st.Sid)
			return d, nil
		}
		d.AllowedBy = append(d.AllowedBy, st.Sid)
	}
	if len(d.AllowedBy) > 0 {
		d.Allowed = true
		return d, nil
	}
	if len(misses) == 0 {
		d.Why = "no statement allows " + c.Action
	} else {
		d.Why = "no statement allows it: " + strings.Join(misses, "; ")
	}
	return d, nil
}

func actionMatches(st iam.Statement, action string) bool {
	if !st.NotAction.IsZero() {
		return !slices.ContainsFunc(st.NotAction.Values, func(p string) bool { return globFold(p, action) })
	}
	return slices.ContainsFunc(st.Action.Values, func(p string) bool { return globFold(p, action) })
}

func resourceMatches(st iam.Statement, res string) bool {
	if !st.NotResource.IsZero() {
		return !slices.ContainsFunc(st.NotResource.Values, func(p string) bool { return arnLike(p, res) })
	}
	return slices.ContainsFunc(st.Resource.Values, func(p string) bool { return arnLike(p, res) })
}

func resourcesOf(st iam.Statement) string {
	if !st.NotResource.IsZero() {
		return "all but " + strings.Join(st.NotResource.Values, ", ")
	}
	return strings.Join(st.Resource.Values, ", ")
}

// operator is a parsed condition operator.
type operator struct {
	name     string // the base: StringLike
	set      string // "", "ForAllValues", "ForAnyValue"
	ifExists bool
	negated  bool
}

var baseOperators = map[string]bool{
	"StringEquals": true, "StringNotEquals": true, "StringEqualsIgnoreCase": true, "StringNotEqualsIgnoreCase": true,
	"StringLike": true, "StringNotLike": true,
	"ArnEquals": true, "ArnNotEquals": true, "ArnLike": true, "ArnNotLike": true,
	"Bool": true, "Null": true,
}

func parseOperator(op string) (operator, error) {
	o := operator{name: op}
	if s, rest, ok := strings.Cut(o.name, ":"); ok {
		if s != "ForAllValues" && s != "ForAnyValue" {
			return o, fmt.Errorf("condition operator %q: unknown set operator %q", op, s)
		}
		o.set, o.name = s, rest
	}
	if n, ok := strings.CutSuffix(o.name, "IfExists"); ok {
		o.name, o.ifExists = n, true
	}
	if !baseOperators[o.name] {
		return o, fmt.Errorf("condition operator %q is not modelled (only String*, Arn*, Bool and Null, with IfExists, ForAllValues and ForAnyValue)", op)
	}
	if o.name == "Null" && (o.ifExists || o.set != "") {
		return o, fmt.Errorf("condition operator %q: Null takes no IfExists or set operator", op)
	}
	o.negated = strings.Contains(o.name, "Not")
	return o, nil
}

// conditionsHold: every operator, every key under it, at least one value.
func conditionsHold(cond map[string]map[string]iam.Strings, ctx map[string][]string) (bool, string, error) {
	ops := make([]string, 0, len(cond))
	for op := range cond {
		ops = append(ops, op)
	}
	sort.Strings(ops)
	for _, op := range ops {
		o, err := parseOperator(op)
		if err != nil {
			return false, "", err
		}
		keys := make([]string, 0, len(cond[op]))
		for k := range cond[op] {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			want := cond[op][k].Values
			got, present := ctx[strings.ToLower(k)]
			if !o.holds(want, got, present) {
				have := "absent"
				if present {
					have = strings.Join(got, ",")
				}
				return false, fmt.Sprintf("condition %s %s %v not met (%s: %s)", op, k, want, k, have), nil
			}
		}
	}
	return true, "", nil
}

// holds applies IAM's rules for one key: a missing key fails a positive
// operator and passes a negated one, IfExists and ForAllValues; Null
// tests presence only.
func (o operator) holds(want, got []string, present bool) bool {
	if o.name == "Null" {
		for _, w := range want {
			if strings.EqualFold(w, "true") == !present {
				return true
			}
		}
		return false
	}
	if !present || len(got) == 0 {
		switch {
		case o.ifExists, o.set == "ForAllValues":
			return true
		case o.set == "ForAnyValue":
			return false
		default:
			return o.negated
		}
	}
	// one: the value v satisfies the operator (a negated operator: it
	// matches none of the wanted values).
	one := func(v string) bool {
		m := slices.ContainsFunc(want, func(w string) bool { return o.match(w, v) })
		if o.negated {
			return !m
		}
		return m
	}
	switch o.set {
	case "ForAllValues":
		for _, v := range got {
			if !one(v) {
				return false
			}
		}
		return true
	case "ForAnyValue":
		return slices.ContainsFunc(got, one)
	}
	// No set operator on a multivalued key: a positive operator holds when
	// any value matches, a negated one when none does.
	if o.negated {
		return !slices.ContainsFunc(got, func(v string) bool { return !one(v) })
	}
	return slices.ContainsFunc(got, one)
}

func (o operator) match(want, v string) bool {
	switch o.name {
	case "StringEquals", "StringNotEquals":
		return want == v
	case "StringEqualsIgnoreCase", "StringNotEqualsIgnoreCase":
		return strings.EqualFold(want, v)
	case "StringLike", "StringNotLike":
		return glob(want, v)
	case "ArnEquals", "ArnNotEquals", "ArnLike", "ArnNotLike":
		return arnLike(want, v)
	case "Bool":
		return strings.EqualFold(want, v)
	}
	return false
}

// glob matches IAM's * (any run, colons included) and ? (one character).
func glob(pattern, s string) bool { return globRunes([]rune(pattern), []rune(s)) }

func globRunes(p, s []rune) bool {
	for len(p) > 0 {
		switch p[0] {
		case '*':
			for len(p) > 0 && p[0] == '*' {
				p = p[1:]
			}
			if len(p) == 0 {
				return true
			}
			for i := 0; i <= len(s); i++ {
				if globRunes(p, s[i:]) {
					return true
				}
			}
			return false
		case '?':
			if len(s) == 0 {
				return false
			}
		default:
			if len(s) == 0 || s[0] != p[0] {
				return false
			}
		}
		p, s = p[1:], s[1:]
	}
	return len(s) == 0
}

func globFold(pattern, s string) bool { return glob(strings.ToLower(pattern), strings.ToLower(s)) }

// arnLike compares ARNs as IAM does: "*" alone matches anything; else
// the first five colon-separated parts are matched each on its own (a
// wildcard does not cross a colon there) and the resource part as a
// whole.
func arnLike(pattern, arn string) bool {
	if pattern == "*" {
		return true
	}
	pp := strings.SplitN(pattern, ":", 6)
	ap := strings.SplitN(arn, ":", 6)
	if len(pp) != 6 || len(ap) != 6 {
		return glob(pattern, arn) && len(pp) == len(ap)
	}
	for i := 0; i < 6; i++ {
		if !glob(pp[i], ap[i]) {
			return false
		}
	}
	return true
}
