package config

import (
	"fmt"
	"reflect"
	"strings"

	"go.yaml.in/yaml/v3"
)

// unknownKeys walks the YAML mapping against the struct's yaml tags so that
// every unknown key is reported with its full dotted path and line, with a
// suggestion when it is a near miss of a real key.
func unknownKeys(root *yaml.Node, into any) []Problem {
	doc := root
	if doc.Kind == yaml.DocumentNode && len(doc.Content) == 1 {
		doc = doc.Content[0]
	}
	var probs []Problem
	walkKeys(doc, reflect.TypeOf(into).Elem(), "", &probs)
	return probs
}

func walkKeys(n *yaml.Node, t reflect.Type, prefix string, probs *[]Problem) {
	if n.Kind == yaml.SequenceNode && t.Kind() == reflect.Slice {
		// A list of settings blocks (monitor.checks): each item's keys.
		for i, item := range n.Content {
			walkKeys(item, t.Elem(), fmt.Sprintf("%s[%d]", prefix, i), probs)
		}
		return
	}
	if n.Kind != yaml.MappingNode || t.Kind() != reflect.Struct {
		return
	}
	fields := map[string]reflect.Type{}
	for i := 0; i < t.NumField(); i++ {
		name, _, _ := strings.Cut(t.Field(i).Tag.Get("yaml"), ",")
		if name == "" || name == "-" {
			continue
		}
		fields[name] = t.Field(i).Type
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		path := k.Value
		if prefix != "" {
			path = prefix + "." + k.Value
		}
		ft, ok := fields[k.Value]
		if !ok {
			why := fmt.Sprintf("unknown key (line %d)", k.Line)
			if s := nearest(k.Value, fields); s != "" {
				why += fmt.Sprintf("; did you mean %q?", s)
			}
			*probs = append(*probs, Problem{Key: path, Why: why})
			continue
		}
		walkKeys(v, ft, path, probs)
	}
}

func nearest(word string, fields map[string]reflect.Type) string {
	best, bestD := "", 3
	for f := range fields {
		if d := editDistance(word, f); d < bestD || (d == bestD && f < best) {
			best, bestD = f, d
		}
	}
	return best
}

func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}
