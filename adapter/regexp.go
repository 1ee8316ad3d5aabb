package adapter

import (
	"errors"
	"fmt"
	"regexp"
	"regexp/syntax"
)

// maxShownExpr bounds how much of a regular expression an error repeats:
// a pattern can be megabytes long, and the message is one line.
const maxShownExpr = 80

// CompileRegexp compiles expr; its error says what is wrong and where,
// quoting at most maxShownExpr bytes of the expression (Go's own error
// repeats all of it, twice with the caller's context).
func CompileRegexp(expr string) (*regexp.Regexp, error) {
	re, err := regexp.Compile(expr)
	if err == nil {
		return re, nil
	}
	var se *syntax.Error
	if errors.As(err, &se) {
		return nil, fmt.Errorf("%s at %s", se.Code, Abbrev(se.Expr))
	}
	return nil, err
}

// Abbrev quotes s for a message, cut to maxShownExpr bytes with its full
// length said when longer.
func Abbrev(s string) string {
	if len(s) <= maxShownExpr {
		return fmt.Sprintf("%q", s)
	}
	return fmt.Sprintf("%q… (%d bytes)", s[:maxShownExpr], len(s))
}
