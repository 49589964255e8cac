package commands

// didYouMean returns ". Did you mean `x`?", to follow a problem, for the
// candidate closest to word, or "" if none is close enough. Candidates are
// our own words, so they are safe to put in a code span.
func didYouMean(word string, candidates []string) string {
	w := []rune(asciiLower(word))
	// Two edits turn any short word into another ("foo" into "now"), so
	// short words get one.
	limit := 2
	if len(w) <= 4 {
		limit = 1
	}
	best, bestDist := "", limit+1
	for _, c := range candidates {
		cr := []rune(c)
		if abs(len(cr)-len(w)) > limit {
			continue
		}
		if d := editDistance(w, cr); d < bestDist {
			best, bestDist = c, d
		}
	}
	if best == "" {
		return ""
	}
	return ". Did you mean `" + best + "`?"
}

// editDistance is the optimal string alignment distance: Levenshtein plus
// swapping two adjacent letters as one edit, the commonest typo ("stauts").
func editDistance(a, b []rune) int {
	prev2 := make([]int, len(b)+1)
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
			if i > 1 && j > 1 && a[i-1] == b[j-2] && a[i-2] == b[j-1] {
				cur[j] = min(cur[j], prev2[j-2]+1)
			}
		}
		prev2, prev, cur = prev, cur, prev2
	}
	return prev[len(b)]
}

func abs(x int) int {
	if x < 0 {
		return -x
	}
	return x
}
